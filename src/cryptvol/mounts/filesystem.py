"""Filesystems on mapped devices: make them only on blank devices, mount, grow, measure."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.mounts.mountinfo import mount_at
from cryptvol.system import run
from cryptvol.system.devices import signatures

SUPPORTED = ("ext4", "xfs")


def check_fs_type(fs_type: str) -> str:
    if fs_type not in SUPPORTED:
        raise InvalidArgument(
            f"filesystem {fs_type!r} is not supported; accepted values: {', '.join(SUPPORTED)}"
        )
    return fs_type


def ensure_filesystem(device: str, fs_type: str) -> bool:
    """Make `fs_type` on `device` unless it already holds it; return whether it made one.

    A device holding anything else is left alone: reformatting would destroy data.
    """
    check_fs_type(fs_type)
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
    existing = mount_at(target)
    if existing is not None:
        if os.path.realpath(existing.source) != os.path.realpath(device):
            raise FailedPrecondition(f"{target} is already a mount of {existing.source}")
        return
    opts = list(options)
    if read_only:
        opts.append("ro")
    argv = ["mount", "-t", fs_type]
    if opts:
        argv += ["-o", ",".join(opts)]
    run([*argv, device, target], timeout=120)


def bind_mount(source: str, target: str, read_only: bool) -> None:
    if mount_at(target) is not None:
        return
    argv = ["mount", "--bind"]
    if read_only:
        argv += ["-o", "ro"]
    run([*argv, source, target], timeout=60)


def unmount(target: str) -> None:
    """Unmount `target` until nothing is mounted there; an unmounted target succeeds."""
    while mount_at(target) is not None:
        run(["umount", target], timeout=120)


def grow(device: str, mountpoint: str, fs_type: str) -> None:
    if fs_type == "ext4":
        run(["resize2fs", device], timeout=600)
    elif fs_type == "xfs":
        run(["xfs_growfs", mountpoint], timeout=600)
    else:
        raise InvalidArgument(f"cannot grow filesystem {fs_type!r}")


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
