"""`cryptvol volume show|list`: what the driver knows of a volume, asked over its socket."""

from __future__ import annotations

import json

import click
import grpc

from cryptvol.cli.config import DEFAULT_ENDPOINT
from cryptvol.csi.client import CsiClient
from cryptvol.csi.gen import csi_pb2


def _describe(volume: csi_pb2.Volume) -> dict[str, object]:
    return {
        "id": volume.volume_id,
        "capacity_bytes": volume.capacity_bytes,
        "node": [dict(t.segments) for t in volume.accessible_topology],
        **dict(sorted(volume.volume_context.items())),
    }


@click.group("volume")
def volume_group() -> None:
    """Inspect volumes through a running driver."""


@volume_group.command("show")
@click.argument("volume_id")
@click.option("--endpoint", envvar="CRYPTVOL_ENDPOINT", default=DEFAULT_ENDPOINT,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(volume_id: str, endpoint: str, as_json: bool) -> None:
    """Show one volume: size, node, filesystem, key source and the LUKS parameters it got,
    with the reasons for them."""
    with CsiClient(endpoint) as client:
        try:
            response = client.controller.ControllerGetVolume(
                csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id), timeout=30)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    described = _describe(response.volume)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    width = max(len(k) for k in described)
    for key, value in described.items():
        click.echo(f"{key:<{width}}  {value}")


@volume_group.command("list")
@click.option("--endpoint", envvar="CRYPTVOL_ENDPOINT", default=DEFAULT_ENDPOINT,
              show_default=True)
def list_command(endpoint: str) -> None:
    """List every volume, one line each."""
    with CsiClient(endpoint) as client:
        token = ""
        while True:
            page = client.controller.ListVolumes(
                csi_pb2.ListVolumesRequest(max_entries=500, starting_token=token), timeout=30)
            for entry in page.entries:
                v = entry.volume
                click.echo(f"{v.volume_id}  {v.capacity_bytes:>14}  "
                           f"{v.volume_context.get('fsType', '')}  "
                           f"{v.volume_context.get('pbkdf', '')}")
            token = page.next_token
            if not token:
                break
