"""`cryptvol demo`: play the container orchestrator against a driver it starts, end to end.

It says what it made and why (volume id, cipher, PBKDF, where the wrapped key lives) and
the StorageClass that gives the same volume in a cluster. On a host without device-mapper
the whole demo reruns inside the test VM (a real kernel with dm-crypt), because the node
half cannot run here otherwise; `--work-dir` is shared into the VM, so what the demo keeps
there stays on this host.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from cryptvol import DRIVER_NAME
from cryptvol.errors import Unavailable
from cryptvol.system import process

if TYPE_CHECKING:  # imported where used: the CLI starts faster without gRPC
    from cryptvol.csi.client import CsiClient
    from cryptvol.csi.gen import csi_pb2

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
def running_driver(scratch: Path, pool: Path, log_path: Path) -> Iterator[CsiClient]:
    from cryptvol.csi.client import CsiClient

    endpoint = f"unix://{scratch}/csi.sock"
    log = log_path.open("ab")
    proc = process.start(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", endpoint,
         "--node-id", "demo-node", "--state-dir", str(scratch / "state"),
         "--pool-dir", str(pool), "--kubelet-dir", str(scratch), "--log-json"],
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdout=log, stderr=log,
    )
    client = CsiClient(endpoint)
    try:
        try:
            client.wait_ready(60)
        except TimeoutError:
            raise Unavailable(f"the demo's driver did not become ready in 60 s; its log: "
                              f"{log_path}") from None
        yield client
    finally:
        client.close()
        process.stop(proc, grace=30)
        log.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def storage_class_yaml(parameters: dict[str, str], size_mib: int) -> str:
    """A StorageClass (and a claim) that give the demo's volume in a cluster."""
    params = "".join(f'  {k}: "{v}"\n' for k, v in sorted(parameters.items()))
    return (
        "apiVersion: storage.k8s.io/v1\n"
        "kind: StorageClass\n"
        "metadata:\n"
        "  name: cryptvol-demo\n"
        f"provisioner: {DRIVER_NAME}\n"
        f"parameters:\n{params}"
        "allowVolumeExpansion: true\n"
        "volumeBindingMode: WaitForFirstConsumer\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: PersistentVolumeClaim\n"
        "metadata:\n"
        "  name: demo-volume\n"
        "spec:\n"
        "  storageClassName: cryptvol-demo\n"
        "  accessModes: [ReadWriteOnce]\n"
        f"  resources: {{requests: {{storage: {size_mib}Mi}}}}\n"
    )


def _explain(volume: csi_pb2.Volume, state: Path, shown: Path) -> None:
    """What CreateVolume chose and why, and where the volume's wrapped key is: read from the
    store in `state`, told as in `shown` (where the demo leaves the state)."""
    context = volume.volume_context
    cipher = context["cipher"]
    if cipher == "aes-xts-plain64 512-bit":
        cipher += " (the default: XTS splits the key into two AES-256 keys)"
    click.echo(f"      volume {volume.volume_id}: {context['fsType']}, "
               f"{context['keySource']} key")
    click.echo(f"      cipher  {cipher}")
    click.echo(f"      PBKDF   {context['pbkdf']}: {context['luks']}")
    for line in _where_is_the_key(volume.volume_id, state, shown):
        click.echo(f"      {line}")


def _where_is_the_key(volume_id: str, state: Path, shown: Path) -> list[str]:
    from cryptvol.keys.envelope import Envelope
    from cryptvol.keys.kek_local import KEK_FILE
    from cryptvol.keys.keyset import dek_key
    from cryptvol.store.sqlite import DB_FILE, SqliteStore

    store = SqliteStore(state / DB_FILE, readonly=True)
    try:
        entry = store.get(dek_key(volume_id))
    finally:
        store.close()
    if entry is None:
        return ["key     no wrapped key found"]
    kek = Envelope.from_bytes(entry.value, what=f"volume {volume_id}").kek_id
    return [f"key     a random 256-bit DEK, wrapped (AES-256-GCM) under KEK {kek},",
            f"        stored as {dek_key(volume_id)} in {shown / DB_FILE};",
            f"        the KEK is in {shown / KEK_FILE}"]


def run_demo(work: Path, *, keep: bool) -> None:
    """Run the demo; the pool and the driver's log go in `work`. With `keep`, the volume
    is not deleted and the state is copied into `work` at the end, for inspection."""
    from cryptvol.csi.client import mount_capability

    step = Steps()
    fs = mount_capability("ext4")
    pool = work / "pool"
    # Sockets and SQLite's WAL need a local filesystem, which `work` (a folder shared into
    # the VM) may not be; the state is copied into `work` at the end when kept.
    with tempfile.TemporaryDirectory(prefix="cryptvol-demo-") as tmp:
        scratch = Path(tmp)
        staging = scratch / "staging"
        target = scratch / "target"
        staging.mkdir()
        with running_driver(scratch, pool, work / "driver.log") as c:
            vid = _lifecycle(c, step, fs, scratch / "state", work / "state" if keep else
                             scratch / "state", staging, target, pool, keep=keep)
        if keep:
            _keep_state(scratch / "state", work / "state")
    click.echo(f"demo passed: {step.count} steps in {time.monotonic() - step.started:.1f} s")
    click.echo("\nThe same volume in a cluster:\n")
    click.echo(storage_class_yaml(demo_parameters(), SIZE_MIB))
    if keep:
        click.echo(f"kept in {work}: volume {vid} (not deleted), its backing file, the state "
                   "(a `cryptvol state backup` copy and the KEK file) and driver.log. Try:")
        click.echo(f"  cryptsetup luksDump {pool / f'{vid}.img'}")


SIZE_MIB = 64


def demo_parameters() -> dict[str, str]:
    """The StorageClass parameters the demo's CreateVolume sends."""
    from cryptvol.engine.parameters import FSTYPE_KEY

    return {FSTYPE_KEY: "ext4", "keySource": "managed"}


def _lifecycle(c: CsiClient, step: Steps, fs: csi_pb2.VolumeCapability, state: Path,
               shown_state: Path, staging: Path, target: Path, pool: Path, *,
               keep: bool) -> str:
    from cryptvol.csi.gen import csi_pb2

    create = csi_pb2.CreateVolumeRequest(
        name="demo-volume", volume_capabilities=[fs], parameters=demo_parameters(),
        capacity_range=csi_pb2.CapacityRange(required_bytes=SIZE_MIB * MIB))
    created = step(f"CreateVolume ({SIZE_MIB} MiB, ext4, managed key)",
                   lambda: c.controller.CreateVolume(create))
    vid = str(created.volume.volume_id)
    _explain(created.volume, state, shown_state)
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
    backing = pool / f"{vid}.img"

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
    if keep:
        return vid
    step("DeleteVolume (key shredded, file removed)", lambda: c.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=vid)))
    if backing.exists():
        raise click.ClickException("backing file still exists after DeleteVolume")
    return vid


def _keep_state(state: Path, kept: Path) -> None:
    from cryptvol.keys.kek_local import KEK_FILE
    from cryptvol.store.sqlite import DB_FILE
    from cryptvol.store.sqlite_backup import backup

    kept.mkdir(mode=0o700, exist_ok=True)
    backup(state / DB_FILE, kept / DB_FILE, replace=True)
    shutil.copy2(state / KEK_FILE, kept / KEK_FILE)


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
              help="Keep the demo's volume, pool, state and log here to inspect afterwards "
                   "(default: a temporary folder, removed, and the volume deleted).")
def demo_command(work_dir: Path | None) -> None:
    """Create, stage, publish, write, restage, verify, expand and delete one volume."""
    from cryptvol.vm import IN_VM_ENV, dm_crypt_available, run_in_vm

    if work_dir is not None:
        work_dir = work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
    if not dm_crypt_available() and os.environ.get(IN_VM_ENV) != "1":
        click.echo("this host has no device-mapper: running the demo inside a throwaway VM "
                   "with a real kernel")
        argv = [sys.executable, "-m", "cryptvol", "demo"]
        if work_dir is not None:
            argv += ["--work-dir", str(work_dir)]
        # The work dir is shared into the guest at the same path, so what the demo keeps
        # there is on this host afterwards.
        sys.exit(run_in_vm(argv, cwd=Path.cwd(), timeout=900, work_dir=work_dir))
    if work_dir is not None:
        click.echo(f"cryptvol demo in {work_dir} (kept afterwards)")
        run_demo(work_dir, keep=True)
        return
    with tempfile.TemporaryDirectory(prefix="cryptvol-demo-") as tmp:
        click.echo(f"cryptvol demo in {tmp}")
        run_demo(Path(tmp), keep=False)
