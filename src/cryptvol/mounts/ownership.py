"""A pod's fsGroup applied to a host-mounted volume, as kubelet would apply it.

The node advertises VOLUME_MOUNT_GROUP so that Kata direct volumes can carry fsGroup into
the guest; kubelet then leaves fsGroup to the driver for every volume it serves, so the
host mode must apply it itself: every entry's group becomes the fsGroup, files gain group
read-write (read when the publication is read-only), directories also group execute and
setgid, so that what the pod creates inherits the group. Symlinks get the group, never a
mode change, and are never followed: each entry is opened without following symlinks and
changed through its descriptor, so a link swapped in by the workload points nowhere useful.
"""

from __future__ import annotations

import os
import stat

ALWAYS = "Always"
ON_ROOT_MISMATCH = "OnRootMismatch"
_RW = 0o660
_RO = 0o440
_DIR_EXTRA = stat.S_ISGID | 0o110
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def apply_fs_group(root: str, gid: int, read_only: bool, policy: str = ALWAYS) -> None:
    mask = _RO if read_only else _RW
    root_fd = os.open(root, _OPEN | os.O_DIRECTORY)
    try:
        if policy == ON_ROOT_MISMATCH and _root_matches(root_fd, gid, mask):
            return
        _change(root_fd, gid, mask)
        for _dir, dirs, files, dir_fd in os.fwalk(dir_fd=root_fd, follow_symlinks=False):
            for name in dirs + files:
                _change_entry(dir_fd, name, gid, mask)
    finally:
        os.close(root_fd)


def _root_matches(fd: int, gid: int, mask: int) -> bool:
    st = os.fstat(fd)
    wanted = mask | _DIR_EXTRA
    return st.st_gid == gid and st.st_mode & wanted == wanted


def _change_entry(dir_fd: int, name: str, gid: int, mask: int) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        # Symlinks, devices, fifos, sockets: the group only; opening them could block or
        # act on something else.
        os.chown(name, -1, gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except FileNotFoundError:
        return  # removed by the workload meanwhile
    try:
        _change(fd, gid, mask)
    finally:
        os.close(fd)


def _change(fd: int, gid: int, mask: int) -> None:
    st = os.fstat(fd)
    if st.st_gid != gid:
        os.fchown(fd, -1, gid)
        # The kernel drops setuid and setgid from a file whose owner changed; they stay off.
        st = os.fstat(fd)
    extra = mask | (_DIR_EXTRA if stat.S_ISDIR(st.st_mode) else 0)
    mode = stat.S_IMODE(st.st_mode)
    if mode | extra != mode:
        os.fchmod(fd, mode | extra)
