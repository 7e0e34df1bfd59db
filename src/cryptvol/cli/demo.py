"""`cryptvol demo`: play the container orchestrator against a driver it starts, end to end.

On a host without device-mapper the whole demo reruns inside the test VM (a real kernel
with dm-crypt), because the node half cannot run here otherwise.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click

from cryptvol.csi.client import CsiClient, mount_capability
from cryptvol.csi.gen import csi_pb2
from cryptvol.system import process

T = TypeVar("T")
MIB = 1024 * 1024
MARKER = b"cryptvol-demo-marker-7f3a9c"


class Steps:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count = 0

    def __call__(self, title: str, action: Callable[[], T]) -> T:
        self.count += 1
        begin = time.monotonic()
        result = action()
        took = (time.monotonic() - begin) * 1000
        click.echo(f"  {self.count:2d}. {title:<58} {took:8.1f} ms")
        return result


@contextmanager
def running_driver(work: Path) -> Iterator[CsiClient]:
    endpoint = f"unix://{work}/csi.sock"
    log = (work / "driver.log").open("wb")
    proc = process.start(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", endpoint,
         "--node-id", "demo-node", "--state-dir", str(work / "state"),
         "--pool-dir", str(work / "pool"), "--kubelet-dir", str(work), "--log-json"],
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdout=log, stderr=log,
    )
    client = CsiClient(endpoint)
    try:
        client.wait_ready(60)
        yield client
    finally:
        client.close()
        process.stop(proc, grace=30)
        log.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_demo(work: Path) -> None:
    step = Steps()
    fs = mount_capability("ext4")
    staging = work / "staging"
    target = work / "target"
    staging.mkdir()
    with running_driver(work) as c:
        create = csi_pb2.CreateVolumeRequest(
            name="demo-volume", volume_capabilities=[fs],
            capacity_range=csi_pb2.CapacityRange(required_bytes=64 * MIB))
        created = step("CreateVolume (64 MiB, ext4, managed key)",
                       lambda: c.controller.CreateVolume(create))
        vid = created.volume.volume_id
        stage = csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=str(staging), volume_capability=fs)
        publish = csi_pb2.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=str(staging), target_path=str(target),
            volume_capability=fs)
        step("NodeStageVolume (luksFormat, open, mkfs.ext4, mount)",
             lambda: c.node.NodeStageVolume(stage))
        step("NodePublishVolume (bind mount)", lambda: c.node.NodePublishVolume(publish))
        data = target / "data.bin"

        def write() -> str:
            payload = MARKER + os.urandom(4 * MIB)
            data.write_bytes(payload)
            os.sync()
            return hashlib.sha256(payload).hexdigest()

        digest = step("write 4 MiB with a marker, sha256", write)
        unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target))
        unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id=vid,
                                                   staging_target_path=str(staging))
        step("NodeUnpublishVolume", lambda: c.node.NodeUnpublishVolume(unpublish))
        step("NodeUnstageVolume (umount, close, detach)",
             lambda: c.node.NodeUnstageVolume(unstage))
        step("NodeStageVolume again (opens, never reformats)",
             lambda: c.node.NodeStageVolume(stage))
        step("NodePublishVolume again", lambda: c.node.NodePublishVolume(publish))

        def verify() -> None:
            if _sha256(data) != digest:
                raise click.ClickException("checksum mismatch after restage")

        step("verify sha256 after restage", verify)
        mapping = Path("/dev/mapper") / created.volume.volume_context["mapping"]
        backing = work / "pool" / f"{vid}.img"

        def where_is_marker() -> None:
            plain = _contains(mapping, MARKER)
            raw = _contains(backing, MARKER)
            if not plain or raw:
                raise click.ClickException(
                    f"marker through mapping: {plain}, in backing file: {raw}")

        step("marker readable via dm-crypt, absent from backing file", where_is_marker)

        def expand() -> int:
            grown = c.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
                volume_id=vid, volume_path=str(target), staging_target_path=str(staging),
                capacity_range=csi_pb2.CapacityRange(required_bytes=128 * MIB)))
            return int(grown.capacity_bytes)

        step("expand online to 128 MiB (the node grows file, mapping, filesystem)", expand)

        def verify_grown() -> None:
            verify()
            st = os.statvfs(target)
            if st.f_blocks * st.f_frsize < 100 * MIB:
                raise click.ClickException("filesystem did not grow")

        step("verify data and new filesystem size", verify_grown)
        step("NodeUnpublishVolume", lambda: c.node.NodeUnpublishVolume(unpublish))
        step("NodeUnstageVolume", lambda: c.node.NodeUnstageVolume(unstage))
        step("DeleteVolume (key shredded, file removed)", lambda: c.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=vid)))
        if backing.exists():
            raise click.ClickException("backing file still exists after DeleteVolume")
    click.echo(f"demo passed: {step.count} steps in {time.monotonic() - step.started:.1f} s")


def _contains(path: Path, needle: bytes, limit: int = 256 * MIB) -> bool:
    with path.open("rb") as f:
        tail = b""
        read = 0
        while read < limit and (chunk := f.read(4 * MIB)):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]
            read += len(chunk)
    return False


@click.command("demo")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the demo keeps its pool and state (default: a temporary folder).")
def demo_command(work_dir: Path | None) -> None:
    """Create, stage, publish, write, restage, verify, expand and delete one volume."""
    from cryptvol.vm import dm_crypt_available, run_in_vm

    if not dm_crypt_available() and os.environ.get("CRYPTVOL_IN_VM") != "1":
        click.echo("this host has no device-mapper: running the demo inside a throwaway VM "
                   "with a real kernel")
        code = run_in_vm([sys.executable, "-m", "cryptvol", "demo"], cwd=Path.cwd(),
                         timeout=900)
        sys.exit(code)
    with tempfile.TemporaryDirectory(prefix="cryptvol-demo-", dir=work_dir) as tmp:
        click.echo(f"cryptvol demo in {tmp}")
        run_demo(Path(tmp))
