"""Filesystems on mapped devices: make them only on blank devices, mount, grow, measure."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from cryptvol.errors import FailedPrecondition, InvalidArgument, quoted
from cryptvol.system import run
from cryptvol.system.devices import kernel_name, recognised_header, signatures

SUPPORTED = ("ext4", "xfs")


def check_fs_type(fs_type: str) -> str:
    if fs_type not in SUPPORTED:
        raise InvalidArgument(
            f"filesystem {quoted(fs_type)} is not supported; accepted values: "
            f"{', '.join(SUPPORTED)}"
        )
    return fs_type


def ensure_filesystem(device: str, fs_type: str) -> bool:
    """Make `fs_type` on `device` unless it already holds it; return whether it made one.

    A device holding anything else is left alone: reformatting would destroy data.
    """
    check_fs_type(fs_type)
    if recognised_header(device) == fs_type:
        return False
    found = signatures(device)
    if found == [fs_type]:
        return False
    if found:
        raise FailedPrecondition(
            f"the volume holds {', '.join(found)}, not {fs_type}; it is never reformatted"
        )
    # No discard pass: the device was just proven blank (all zeros at the edges, freshly
    # made), and discarding through dm-crypt is refused unless allowDiscards is set.
    if fs_type == "ext4":
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", device], timeout=600)
    else:
        run(["mkfs.xfs", "-q", "-K", device], timeout=600)
    return True


def mount(device: str, target: str, fs_type: str, options: list[str], read_only: bool) -> None:
    """Mount `device` at `target`. The caller has checked what `target` holds: this mounts."""
    opts = list(options)
    if read_only:
        opts.append("ro")
    argv = ["mount", "-t", fs_type]
    if opts:
        argv += ["-o", ",".join(opts)]
    run([*argv, device, target], timeout=120)


def bind_mount(source: str, target: str, read_only: bool) -> None:
    argv = ["mount", "--bind"]
    if read_only:
        argv += ["-o", "ro"]
    run([*argv, source, target], timeout=60)


def unmount(target: str) -> None:
    """Unmount the topmost mount at `target`; the caller has checked that it is its own."""
    run(["umount", target], timeout=120)


def grow(device: str, mountpoint: str, fs_type: str) -> None:
    if fs_type == "ext4":
        run(["resize2fs", device], timeout=600)
    elif fs_type == "xfs":
        run(["xfs_growfs", mountpoint], timeout=600)
    else:
        raise InvalidArgument(f"cannot grow filesystem {quoted(fs_type)}")


def health(device: str, mountpoint: str, fs_type: str) -> str | None:
    """Why the filesystem of `device` mounted at `mountpoint` is not healthy, or None:
    ext4 counts the errors it met in sysfs; xfs, once shut down, answers EIO to a stat."""
    name = kernel_name(device)
    if fs_type == "ext4":
        try:
            count = int(Path(f"/sys/fs/ext4/{name}/errors_count").read_text().strip() or 0)
        except (OSError, ValueError):
            count = 0
        if count:
            return (f"ext4 has recorded {count} error(s) on the volume; unstage it and run "
                    "fsck.ext4 on the mapping")
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return (f"{fs_type} answers I/O errors (an xfs that shut down does); unstage the "
                    "volume and repair the filesystem")
    return None


@dataclass(frozen=True)
class Usage:
    total_bytes: int
    used_bytes: int
    available_bytes: int
    total_inodes: int
    used_inodes: int
    available_inodes: int


def usage(path: str) -> Usage:
    st = os.statvfs(path)
    return Usage(
        total_bytes=st.f_blocks * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        total_inodes=st.f_files,
        used_inodes=st.f_files - st.f_ffree,
        available_inodes=st.f_favail,
    )
