"""No key byte ever leaves the driver except on a command's stdin.

Runs the whole lifecycle plus failing requests while capturing every log line, every gRPC
error message, and the argv and environment of every process the driver started; then
looks for each DEK and the KEK in raw, hex and base64 form in all of it.
"""

import base64
import json

import grpc

from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.keys.manager import open_local
from support.canary import leaks
from support.co import create_volume


def test_no_key_material_in_logs_errors_argv_or_environment(csi, driver, tmp_path):
    messages: list[str] = []
    volumes = []
    for kind in ("ext4", "block"):
        vol = create_volume(csi, tmp_path, f"canary-{kind}", kind)
        vol.stage()
        vol.publish()
        vol.write()
        vol.expand(96 * 1024 * 1024)
        volumes.append(vol)
    bad_requests = [
        lambda: csi.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=volumes[0].volume_id,
                staging_target_path=str(tmp_path / "x" / "y"),
                volume_capability=volumes[0].cap,
            )
        ),
        lambda: csi.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name="bad", volume_capabilities=[volumes[0].cap], parameters={"keySize": "9"}
            )
        ),
        lambda: csi.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=volumes[0].volume_id,
                staging_target_path=str(volumes[1].staging),
                volume_capability=volumes[1].cap,
                secrets={"passphrase": "should-not-matter"},
            )
        ),
    ]
    for call in bad_requests:
        try:
            call()
        except grpc.RpcError as exc:
            messages.append(exc.details() or "")

    store, keys = open_local(driver.state_dir)
    try:
        deks = [keys.get_dek(v.volume_id).reveal() for v in volumes]
    finally:
        store.close()
    kek_file = json.loads((driver.state_dir / "kek.json").read_text())
    keks = [base64.b64decode(v) for v in _b64_values(kek_file)]
    assert deks and keks

    for vol in volumes:
        vol.release()
        vol.delete()

    assert driver.audit(), "the exec audit recorded nothing"
    assert len(driver.log_lines()) > 10
    assert leaks(driver, deks + keks, messages) == []


def _b64_values(node: object) -> list[str]:
    """Every string in the KEK file that decodes as base64 to 32 bytes: the KEK material."""
    found = []
    if isinstance(node, dict):
        for value in node.values():
            found += _b64_values(value)
    elif isinstance(node, list):
        for value in node:
            found += _b64_values(value)
    elif isinstance(node, str):
        try:
            if len(base64.b64decode(node, validate=True)) == 32:
                found.append(node)
        except ValueError:
            pass
    return found
