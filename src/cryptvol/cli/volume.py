"""`cryptvol volume show|list`: what the driver knows of a volume, asked over its socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from cryptvol.cli.config import DEFAULT_ENDPOINT
from cryptvol.cli.failures import driver_at

if TYPE_CHECKING:  # imported where used: the CLI starts faster without gRPC
    from cryptvol.csi.client import CsiClient
    from cryptvol.csi.gen import csi_pb2

_endpoint_option = click.option(
    "--endpoint", envvar="CRYPTVOL_ENDPOINT", default=DEFAULT_ENDPOINT, show_default=True,
    help="The driver's socket (as `cryptvol serve --endpoint`).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def human_size(size: int) -> str:
    """Bytes as a person writes them: 64 MiB, 1.5 GiB (binary units, as Kubernetes' Mi, Gi)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def node_label(volume: csi_pb2.Volume) -> str:
    """Where the volume is reachable, as a label selector: `cryptvol.io/node=vm`."""
    return ", ".join(
        ",".join(f"{k}={v}" for k, v in sorted(t.segments.items()))
        for t in volume.accessible_topology
    )


def _describe(volume: csi_pb2.Volume) -> dict[str, object]:
    return {
        "id": volume.volume_id,
        "capacity_bytes": volume.capacity_bytes,
        "node": node_label(volume),
        **dict(sorted(volume.volume_context.items())),
    }


@click.group("volume")
def volume_group() -> None:
    """Inspect volumes through a running driver."""


@volume_group.command("show")
@click.argument("volume_id")
@_endpoint_option
@_json_option
def show_command(volume_id: str, endpoint: str, as_json: bool) -> None:
    """Show one volume: size, node, filesystem, key source and the LUKS parameters it got,
    with the reasons for them."""
    from cryptvol.csi.gen import csi_pb2

    with driver_at(endpoint) as client:
        response = client.controller.ControllerGetVolume(
            csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id), timeout=30)
    described = _describe(response.volume)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    size = response.volume.capacity_bytes
    described = {"id": described.pop("id"), "size": f"{human_size(size)} ({size} bytes)",
                 **{k: v for k, v in described.items() if k != "capacity_bytes"}}
    width = max(len(k) for k in described)
    for key, value in described.items():
        click.echo(f"{key:<{width}}  {value}")


def _all_volumes(client: CsiClient) -> Iterator[csi_pb2.Volume]:
    from cryptvol.csi.gen import csi_pb2

    token = ""
    while True:
        page = client.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=500, starting_token=token), timeout=30)
        for entry in page.entries:
            yield entry.volume
        token = page.next_token
        if not token:
            return


_COLUMNS = ("ID", "SIZE", "FS", "KEY", "CIPHER", "PBKDF", "NODE")


@volume_group.command("list")
@_endpoint_option
@_json_option
def list_command(endpoint: str, as_json: bool) -> None:
    """List every volume, one line each."""
    with driver_at(endpoint) as client:
        volumes = list(_all_volumes(client))
    if as_json:
        click.echo(json.dumps([_describe(v) for v in volumes], indent=2))
        return
    if not volumes:
        click.echo(f"no volumes (driver on {endpoint})")
        return
    rows = [_COLUMNS] + [
        (v.volume_id, human_size(v.capacity_bytes), v.volume_context.get("fsType", ""),
         v.volume_context.get("keySource", ""), v.volume_context.get("cipher", ""),
         v.volume_context.get("pbkdf", ""), node_label(v))
        for v in volumes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
