"""The embedded default pool: one sparse file per volume, attached with `losetup`."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from pathlib import Path

from cryptvol.errors import FailedPrecondition, NotFound, ResourceExhausted, quoted
from cryptvol.pools.base import (
    CopyMethod,
    CopySource,
    Pool,
    PoolCapabilities,
    PoolSpace,
    WriteState,
)
from cryptvol.system import CommandError, run
from cryptvol.system.devices import device_size
from cryptvol.system.files import read_marker_file, write_private_file

KIND = "loop"
_SNAPSHOTS = "snapshots"
_REFLINK_PROBE = ".reflink-probe"
_SYS_BLOCK = Path("/sys/block")
_PARTITIONS = "/proc/partitions"
_LOOP_DEVICE = re.compile(r"^loop[0-9]+$")
_VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_IMAGE = ".img"
# The store identity this pool was used with (see Provisioner.store_marker).
MARKER_FILE = ".cryptvol-store-id"


class LoopFiles:
    """Where each volume's backing file is, and which loop device holds it: what both
    sides of the pool need to know."""

    def __init__(self, pool_dir: Path) -> None:
        self.pool_dir = pool_dir
        self._real_dir = os.path.realpath(pool_dir)
        # The loop device last found holding each volume: one sysfs read confirms it, so a
        # node RPC on an attached volume scans no other device.
        self._seen: dict[str, str] = {}

    def path(self, volume_id: str) -> Path:
        if not _VOLUME_ID.match(volume_id):
            raise NotFound(f"volume id {quoted(volume_id)} is not one cryptvol made")
        return self.pool_dir / f"{volume_id}{_IMAGE}"

    def snapshot_path(self, snapshot_id: str) -> Path:
        if not _VOLUME_ID.match(snapshot_id):
            raise NotFound(f"snapshot id {quoted(snapshot_id)} is not one cryptvol made")
        return self.pool_dir / _SNAPSHOTS / f"{snapshot_id}.img"

    def attached_device(self, volume_id: str) -> str | None:
        path = self.path(volume_id)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            if not path.exists():
                return None
            wanted = os.path.realpath(path)
        else:
            wanted = os.path.join(self._real_dir, path.name)
        # sysfs names each loop device's backing file: reading it costs microseconds where
        # running `losetup --associated` costs a process start on every call.
        seen = self._seen.get(volume_id)
        if seen is not None and _backing_file(seen) == wanted:
            return f"/dev/{seen}"
        for name in _sized_loop_devices():
            if _backing_file(name) == wanted:
                self._seen[volume_id] = name
                return f"/dev/{name}"
        self._seen.pop(volume_id, None)
        return None


def _sized_loop_devices() -> list[str]:
    """The loop devices with a size (so every one bound to a volume's file), by name: one
    read of /proc/partitions, which leaves out devices without a size, where opening each
    device's backing_file in sysfs costs a system call per device, most of them unbound."""
    try:
        table = Path(_PARTITIONS).read_text()
    except OSError:
        return sorted(n for n in os.listdir(_SYS_BLOCK) if _LOOP_DEVICE.match(n))
    names = (line.split()[-1] for line in table.splitlines()[1:] if line.strip())
    return sorted(n for n in names if _LOOP_DEVICE.match(n))


def _backing_file(loop_name: str) -> str | None:
    """The backing file sysfs names for loop device `loop_name`; None when it has none
    (detached, or detached meanwhile)."""
    try:
        fd = os.open(f"{_SYS_BLOCK}/{loop_name}/loop/backing_file", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 8192).decode(errors="surrogateescape").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


class LoopProvisioner:
    def __init__(self, files: LoopFiles) -> None:
        self.files = files
        self.pool_dir = files.pool_dir

    def create(self, volume_id: str, size_bytes: int) -> None:
        path = self.files.path(volume_id)
        if path.exists():
            current = path.stat().st_size
            if current != size_bytes:
                raise FailedPrecondition(
                    f"backing file for {volume_id} exists with {current} bytes, "
                    f"not the {size_bytes} asked"
                )
            return
        # What the filesystem has free: no need to add up what every volume occupies.
        free = self.free_bytes()
        if size_bytes > free:
            raise ResourceExhausted(
                f"pool {self.pool_dir} has {free} bytes free, {size_bytes} asked"
            )
        # Write under a temporary name and rename, so a crash never leaves a file of the
        # final name with the wrong size.
        tmp = path.with_suffix(".img.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_durably(tmp, path)

    def delete(self, volume_id: str) -> None:
        path = self.files.path(volume_id)
        path.with_suffix(".img.tmp").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def size(self, volume_id: str) -> int | None:
        path = self.files.path(volume_id)
        return path.stat().st_size if path.exists() else None

    def expand(self, volume_id: str, size_bytes: int) -> int:
        path = self.files.path(volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} has no backing file")
        current = path.stat().st_size
        if size_bytes <= current:
            return current
        free = self.space().free_bytes
        if size_bytes - current > free:
            raise ResourceExhausted(
                f"pool {self.pool_dir} has {free} bytes free; growing "
                f"{volume_id} by {size_bytes - current} bytes does not fit"
            )
        os.truncate(path, size_bytes)
        return size_bytes

    def in_use(self, volume_id: str) -> bool:
        return self.files.attached_device(volume_id) is not None

    def free_bytes(self) -> int:
        # One statfs, where the size needs a stat of every volume's file.
        return shutil.disk_usage(self.pool_dir).free

    def space(self) -> PoolSpace:
        # The pool's files may share their filesystem with others: the pool can hold what
        # its files occupy now plus what is free, not the filesystem's whole size.
        free = self.free_bytes()
        occupied = 0
        for entry in os.scandir(self.pool_dir):
            if entry.name.endswith(_IMAGE) and entry.is_file(follow_symlinks=False):
                # A DeleteVolume beside this call may have removed it since the listing.
                with contextlib.suppress(FileNotFoundError):
                    occupied += entry.stat(follow_symlinks=False).st_blocks * 512
        return PoolSpace(total_bytes=occupied + free, free_bytes=free)

    def volume_ids(self) -> list[str]:
        return sorted(
            entry.name[: -len(_IMAGE)] for entry in os.scandir(self.pool_dir)
            if entry.name.endswith(_IMAGE) and entry.is_file(follow_symlinks=False)
            and _VOLUME_ID.match(entry.name[: -len(_IMAGE)])
        )

    def store_marker(self) -> str | None:
        return read_marker_file(self.pool_dir / MARKER_FILE)

    def mark_store(self, store_id: str) -> None:
        if self.store_marker() == store_id:
            return
        write_private_file(self.pool_dir / MARKER_FILE, f"{store_id}\n".encode())

    def snapshot(self, volume_id: str, snapshot_id: str) -> int:
        source = self.files.path(volume_id)
        if not source.exists():
            raise NotFound(f"volume {volume_id} has no backing file")
        target = self.files.snapshot_path(snapshot_id)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        _copy_file(source, target)
        return target.stat().st_size

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        target = self.files.snapshot_path(snapshot_id)
        target.with_suffix(".img.tmp").unlink(missing_ok=True)
        target.unlink(missing_ok=True)

    def copy(self, source: CopySource, volume_id: str, size_bytes: int) -> None:
        origin = (self.files.snapshot_path(source.snapshot_id) if source.snapshot_id
                  else self.files.path(source.volume_id))
        if not origin.exists():
            what = f"snapshot {source.snapshot_id}" if source.snapshot_id else \
                f"volume {source.volume_id}"
            raise NotFound(f"{what} has no backing file in {self.pool_dir}")
        target = self.files.path(volume_id)
        _copy_file(origin, target)
        if target.stat().st_size < size_bytes:
            os.truncate(target, size_bytes)


def _copy_file(origin: Path, target: Path) -> None:
    """Copy under a temporary name and rename, so a file of the final name is always whole;
    an existing target is a finished earlier copy."""
    if target.exists():
        return
    tmp = target.with_suffix(".img.tmp")
    run(["cp", "--reflink=auto", "--sparse=always", str(origin), str(tmp)], timeout=3600)
    os.chmod(tmp, 0o600)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _rename_durably(tmp, target)


def _rename_durably(tmp: Path, target: Path) -> None:
    """Rename, then fsync the folder: the file's fsync does not make its new name durable,
    and an acknowledged volume whose record survived a power cut must find its file."""
    os.rename(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LoopAttacher:
    def __init__(self, files: LoopFiles) -> None:
        self.files = files

    def attached_device(self, volume_id: str) -> str | None:
        return self.files.attached_device(volume_id)

    def attach(self, volume_id: str) -> str:
        existing = self.files.attached_device(volume_id)
        if existing:
            return existing
        path = self.files.path(volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} has no backing file in {self.files.pool_dir}")
        result = run(["losetup", "--find", "--show", str(path)], timeout=60)
        return result.stdout.strip()

    def detach(self, volume_id: str) -> None:
        while (device := self.files.attached_device(volume_id)) is not None:
            run(["losetup", "--detach", device], timeout=60)

    def written(self, volume_id: str) -> WriteState:
        """A loop file is sparse until written: SEEK_DATA finding no data proves that no
        byte of it was ever written (a filesystem without SEEK_DATA reports it all as
        data, so the engine then reads it)."""
        fd = os.open(self.files.path(volume_id), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.lseek(fd, 0, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset 0: all holes
                return WriteState.NEVER
            return WriteState.UNKNOWN
        finally:
            os.close(fd)
        return WriteState.WRITTEN

    def refresh(self, volume_id: str) -> int:
        device = self.files.attached_device(volume_id)
        if device is None:
            raise NotFound(f"volume {volume_id} is not attached on this node")
        size = device_size(device)
        backing = self.files.path(volume_id)
        if size < (backing.stat().st_size if backing.exists() else 0):
            run(["losetup", "--set-capacity", device], timeout=60)
            size = device_size(device)
        return size


def capabilities(pool_dir: Path) -> PoolCapabilities:
    """Copies are `cp --reflink=auto --sparse=always`: where the pool's filesystem has
    reflinks (xfs, btrfs) a copy shares extents and is taken atomically, so it is thin;
    elsewhere it is a sparse copy of the bytes. Either way the copy is independent."""
    method: CopyMethod = "thin" if _has_reflinks(pool_dir) else "copy"
    return PoolCapabilities(online_expand=True, snapshot=method, clone=method)


def _has_reflinks(pool_dir: Path) -> bool:
    # Named per process: `cryptvol state check` may open the pool while the driver starts.
    probe = pool_dir / f"{_REFLINK_PROBE}.{os.getpid()}"
    clone = pool_dir / f"{_REFLINK_PROBE}.{os.getpid()}.clone"
    try:
        probe.write_bytes(b"\0" * 4096)
        run(["cp", "--reflink=always", str(probe), str(clone)], timeout=30)
        return True
    except CommandError:
        return False
    finally:
        probe.unlink(missing_ok=True)
        clone.unlink(missing_ok=True)


def open_pool(name: str, location: str) -> Pool:
    """A loop pool in the directory `location`, made (0700) if absent."""
    pool_dir = Path(location)
    if not pool_dir.is_absolute():
        raise ValueError(f"a loop pool needs an absolute directory, not {location!r}")
    pool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = LoopFiles(pool_dir)
    return Pool(name=name, kind=KIND, location=str(pool_dir),
                capabilities=capabilities(pool_dir), provisioner=LoopProvisioner(files),
                node=LoopAttacher(files))
