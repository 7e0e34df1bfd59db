"""Kata Containers' direct-volume directory: one folder per volume path, holding mountInfo.json.

The contract (Kata's `src/runtime/pkg/direct-volume/utils.go`): under the root
`/run/kata-containers/shared/direct-volumes`, a folder named by the volume path (for CSI,
the target path) encoded with Go's `base64.URLEncoding` (URL alphabet, `=` padding), mode
0700, holding `mountInfo.json`, mode 0600:
`{"volume-type": "block", "device": ..., "fstype": ..., "metadata": {...}, "options": [...]}`
with `metadata` and `options` left out when empty. When a sandbox takes the volume, Kata
writes an empty file named after the sandbox id beside it, and reads the first entry that
is not mountInfo.json as that id; so the driver never leaves a file of its own there but
for the moment of an atomic write.

Every change goes through a descriptor of the root opened without following symlinks, and
each name below it is opened the same way: a symlink planted anywhere under the root is
refused, never followed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptvol.errors import FailedPrecondition, Internal, InvalidArgument
from cryptvol.mounts.kata_defaults import DIRECT_VOLUMES_DIR

MOUNT_INFO = "mountInfo.json"
# Written and renamed over MOUNT_INFO in one step; a crash may leave it, a retry removes it.
_TEMP = ".mountInfo.json.cryptvol-tmp"
_NAME_MAX = 255
# Sandbox ids are container ids: Kata names the file after one.
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def encode(volume_path: str) -> str:
    """The folder name Kata looks up for `volume_path` (Go's base64.URLEncoding)."""
    return base64.urlsafe_b64encode(volume_path.encode()).decode()


def decode(name: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(name.encode()).decode()
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class MountInfo:
    device: str
    fs_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    volume_type: str = "block"

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "volume-type": self.volume_type,
            "device": self.device,
            "fstype": self.fs_type,
        }
        if self.metadata:
            doc["metadata"] = dict(self.metadata)
        if self.options:
            doc["options"] = list(self.options)
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MountInfo | None:
        """The file as Kata reads it; None when it is not a mountInfo.json at all."""
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("device"), str):
            return None
        metadata = doc.get("metadata") or {}
        options = doc.get("options") or []
        if not isinstance(metadata, dict) or not isinstance(options, list):
            return None
        return cls(
            device=doc["device"],
            fs_type=str(doc.get("fstype", "")),
            metadata={str(k): str(v) for k, v in metadata.items()},
            options=tuple(str(o) for o in options),
            volume_type=str(doc.get("volume-type", "")),
        )


@dataclass(frozen=True)
class Entry:
    """What the folder of one volume path holds."""

    volume_path: str
    info: MountInfo | None  # None: the folder exists without a mountInfo.json
    sandbox_ids: tuple[str, ...]
    others: tuple[str, ...]  # names neither Kata nor the driver would have made


class DirectVolumes:
    """The direct-volume folders under one root (Kata's, or a test's)."""

    def __init__(self, root: Path = DIRECT_VOLUMES_DIR) -> None:
        self.root = root

    def folder(self, volume_path: str) -> Path:
        return self.root / _folder_name(volume_path)

    def entry(self, volume_path: str) -> Entry | None:
        name = _folder_name(volume_path)
        with self._root() as root:
            if root is None:
                return None
            with _open_dir(root, name, volume_path) as folder:
                return None if folder is None else _read_entry(folder, volume_path)

    def published(self, device: str) -> list[str]:
        """Every volume path whose mountInfo.json names `device`."""
        found = []
        with self._root() as root:
            if root is None:
                return []
            for name in sorted(os.listdir(root)):
                volume_path = decode(name)
                if volume_path is None or encode(volume_path) != name:
                    continue  # not a folder Kata would look up
                try:
                    with _open_dir(root, name, volume_path) as folder:
                        info = None if folder is None else _read_info(folder)
                except FailedPrecondition:
                    continue  # someone else's oddity; the paths we act on are checked again
                if info is not None and info.device == device:
                    found.append(volume_path)
        return found

    def write(self, volume_path: str, info: MountInfo) -> None:
        """Write `info` for `volume_path` atomically: the folder (0700) if missing, a temp
        file (0600) fsynced, then renamed over mountInfo.json."""
        name = _folder_name(volume_path)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._root() as root:
            if root is None:
                raise Internal(f"the direct-volume root {self.root} vanished")
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=root)
            with _open_dir(root, name, volume_path) as folder:
                if folder is None:
                    raise Internal(f"the direct-volume folder of {volume_path} vanished")
                os.fchmod(folder, 0o700)  # mkdir's mode passed through the umask
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_TEMP, dir_fd=folder)
                fd = os.open(_TEMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600, dir_fd=folder)
                try:
                    os.fchmod(fd, 0o600)
                    os.write(fd, info.to_json())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(_TEMP, MOUNT_INFO, src_dir_fd=folder, dst_dir_fd=folder)
                os.fsync(folder)

    def remove(self, volume_path: str, device: str) -> bool:
        """Remove the folder of `volume_path` if it is `device`'s: Kata's sandbox records,
        then mountInfo.json, then the folder. False when there is no such folder.

        mountInfo.json goes last but for the folder, so a crash part-way leaves either a
        folder that still proves whose it is, or one with nothing left in it."""
        name = _folder_name(volume_path)
        with self._root() as root:
            if root is None:
                return False
            with _open_dir(root, name, volume_path) as folder:
                if folder is None:
                    return False
                entry = _read_entry(folder, volume_path)
                if entry.others:
                    raise FailedPrecondition(
                        f"the Kata direct-volume folder of {volume_path} holds "
                        f"{', '.join(entry.others)}, which neither Kata nor cryptvol made; "
                        "it is left alone"
                    )
                if entry.info is not None and entry.info.device != device:
                    raise FailedPrecondition(
                        f"{volume_path} is the Kata direct volume of {entry.info.device}, "
                        "not of this volume; it is left alone"
                    )
                for sandbox_id in entry.sandbox_ids:
                    os.unlink(sandbox_id, dir_fd=folder)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_TEMP, dir_fd=folder)
                if entry.info is not None:
                    os.unlink(MOUNT_INFO, dir_fd=folder)
                os.fsync(folder)
            os.rmdir(name, dir_fd=root)
            return True

    @contextlib.contextmanager
    def _root(self) -> Iterator[int | None]:
        try:
            fd = os.open(self.root, _DIR)
        except FileNotFoundError:
            yield None
            return
        except OSError as exc:
            raise FailedPrecondition(
                f"the Kata direct-volume root {self.root} is not a plain directory "
                f"({_why(exc, self.root)})"
            ) from None
        try:
            yield fd
        finally:
            os.close(fd)


def _folder_name(volume_path: str) -> str:
    name = encode(volume_path)
    if len(name) > _NAME_MAX:
        raise InvalidArgument(
            f"target path {volume_path!r} is too long for a Kata direct volume: its base64 "
            f"name would be {len(name)} bytes, over the {_NAME_MAX} a file name may have"
        )
    return name


@contextlib.contextmanager
def _open_dir(root: int, name: str, volume_path: str) -> Iterator[int | None]:
    try:
        fd = os.open(name, _DIR, dir_fd=root)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:
        raise FailedPrecondition(
            f"the Kata direct-volume folder of {volume_path} is not a plain directory "
            f"({_why(exc, name, root)}); it is refused, not followed"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _read_info(folder: int) -> MountInfo | None:
    try:
        fd = os.open(MOUNT_INFO, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FailedPrecondition(
            f"{MOUNT_INFO} is not a plain file ({_why(exc, MOUNT_INFO, folder)}); it is "
            "refused, not followed"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FailedPrecondition(f"{MOUNT_INFO} is not a regular file")
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    info = MountInfo.from_json(raw)
    if info is None:
        raise FailedPrecondition(f"{MOUNT_INFO} is not a mount info document")
    return info


def _read_entry(folder: int, volume_path: str) -> Entry:
    info = _read_info(folder)
    sandboxes, others = [], []
    for name in sorted(os.listdir(folder)):
        if name in (MOUNT_INFO, _TEMP):
            continue
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if _SANDBOX_ID.match(name) and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            sandboxes.append(name)
        else:
            others.append(name)
    return Entry(volume_path, info, tuple(sandboxes), tuple(others))


def _why(exc: OSError, path: str | Path, dir_fd: int | None = None) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return "a symlink"
        except OSError:
            pass
        return "not a directory" if exc.errno == errno.ENOTDIR else "a symlink"
    return exc.strerror or type(exc).__name__
