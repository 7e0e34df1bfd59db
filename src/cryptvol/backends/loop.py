"""The embedded default pool: one sparse file per volume, attached with `losetup`."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cryptvol.backends.base import BackendCapabilities
from cryptvol.errors import FailedPrecondition, NotFound, ResourceExhausted
from cryptvol.system import run
from cryptvol.system.devices import device_size

_SYS_BLOCK = Path("/sys/block")
_VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LoopBackend:
    name = "loop"
    capabilities = BackendCapabilities(
        online_expand=True, thin_snapshot=False, clone=False, block_copy=True
    )

    def __init__(self, pool_dir: Path) -> None:
        self.pool_dir = pool_dir
        pool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, volume_id: str) -> Path:
        if not _VOLUME_ID.match(volume_id):
            raise NotFound(f"volume id {volume_id!r} is not one cryptvol made")
        return self.pool_dir / f"{volume_id}.img"

    def create(self, volume_id: str, size_bytes: int) -> None:
        path = self.path(volume_id)
        if path.exists():
            current = path.stat().st_size
            if current != size_bytes:
                raise FailedPrecondition(
                    f"backing file for {volume_id} exists with {current} bytes, "
                    f"not the {size_bytes} asked"
                )
            return
        if size_bytes > self.available_bytes():
            raise ResourceExhausted(
                f"pool {self.pool_dir} has {self.available_bytes()} bytes free, "
                f"{size_bytes} asked"
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
        os.rename(tmp, path)

    def delete(self, volume_id: str) -> None:
        self.detach(volume_id)
        path = self.path(volume_id)
        path.with_suffix(".img.tmp").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def size(self, volume_id: str) -> int | None:
        path = self.path(volume_id)
        return path.stat().st_size if path.exists() else None

    def expand(self, volume_id: str, size_bytes: int) -> int:
        path = self.path(volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} has no backing file")
        current = path.stat().st_size
        if size_bytes <= current:
            return current
        if size_bytes - current > self.available_bytes():
            raise ResourceExhausted(
                f"pool {self.pool_dir} has {self.available_bytes()} bytes free; growing "
                f"{volume_id} by {size_bytes - current} bytes does not fit"
            )
        os.truncate(path, size_bytes)
        return size_bytes

    def available_bytes(self) -> int:
        return shutil.disk_usage(self.pool_dir).free

    def attached_device(self, volume_id: str) -> str | None:
        path = self.path(volume_id)
        if not path.exists():
            return None
        # sysfs names each loop device's backing file: reading it costs microseconds where
        # running `losetup --associated` costs a process start on every call.
        wanted = os.path.realpath(path)
        for backing in sorted(_SYS_BLOCK.glob("loop*/loop/backing_file")):
            try:
                name = backing.read_text().strip()
            except OSError:
                continue  # detached between the glob and the read
            if name == wanted:
                return f"/dev/{backing.parent.parent.name}"
        return None

    def attach(self, volume_id: str) -> str:
        existing = self.attached_device(volume_id)
        if existing:
            return existing
        path = self.path(volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} has no backing file in {self.pool_dir}")
        result = run(["losetup", "--find", "--show", str(path)], timeout=60)
        return result.stdout.strip()

    def detach(self, volume_id: str) -> None:
        while (device := self.attached_device(volume_id)) is not None:
            run(["losetup", "--detach", device], timeout=60)

    def refresh(self, volume_id: str) -> int:
        device = self.attached_device(volume_id)
        if device is None:
            raise NotFound(f"volume {volume_id} is not attached on this node")
        size = device_size(device)
        if size < (self.size(volume_id) or 0):
            run(["losetup", "--set-capacity", device], timeout=60)
            size = device_size(device)
        return size
