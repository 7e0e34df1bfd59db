"""Block devices: prove one blank before anything formats it, read its size.

A device is proven blank either by its pool (nothing of it was ever written: see
`pools.base.WriteState`), or by reading it: `blkid` finds no signature on it (no LUKS
header, no filesystem, no partition table) AND every byte of it reads back as zero. Reading
catches data blkid does not recognise, wherever it is: a file holding data only in its
middle is not blank, and formatting over it would destroy that data.
"""

from __future__ import annotations

import itertools
import os

from cryptvol.errors import FailedPrecondition
from cryptvol.system.runner import run

_PROBE_BYTES = 1024 * 1024
# blkid's documented exit code when probing found nothing.
_BLKID_NOTHING_FOUND = 2


def signatures(device: str) -> list[str]:
    """The signatures blkid finds on `device` (TYPE and PTTYPE values)."""
    result = run(["blkid", "-p", "-o", "export", device], check=False, timeout=60)
    if result.returncode == _BLKID_NOTHING_FOUND:
        return []
    if result.returncode != 0:
        raise FailedPrecondition(
            f"cannot probe {device} for signatures (blkid exit {result.returncode}); "
            "refusing to format a device not proven blank"
        )
    found = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key in ("TYPE", "PTTYPE"):
            found.append(value)
    return found or ["unknown"]


# What the first bytes of a device show, at a glance (facts of each on-disk format): the
# LUKS2 binary header's magic and big-endian version 2 at offset 0; the ext4 superblock at
# 1024, its little-endian magic 0xEF53 at +0x38 and the extents flag (0x40) in its
# incompatible features at +0x60 (ext2 and ext3 lack it); XFS's superblock magic at 0.
_LUKS2_MAGIC = b"LUKS\xba\xbe\x00\x02"
_EXT_MAGIC_AT, _EXT_MAGIC = 1024 + 0x38, b"\x53\xef"
_EXT_INCOMPAT_AT, _EXT_INCOMPAT_EXTENTS = 1024 + 0x60, 0x40
_XFS_MAGIC = b"XFSB"


def recognised_header(device: str) -> str | None:
    """"luks2", "ext4" or "xfs" when the device's first bytes show that format's header;
    None otherwise. A restage finds its own volume's header here without starting blkid
    or cryptsetup, each a process start that costs hundreds of milliseconds on a small or
    emulated node; None sends the caller to them, which know far more formats. Only the
    non-destructive path trusts it: a wrong guess makes the open or mount fail, and nothing
    is ever formatted on its word."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.pread(fd, 4096, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if head.startswith(_LUKS2_MAGIC):
        return "luks2"
    if head.startswith(_XFS_MAGIC):
        return "xfs"
    if len(head) >= _EXT_INCOMPAT_AT + 4 and \
            head[_EXT_MAGIC_AT:_EXT_MAGIC_AT + 2] == _EXT_MAGIC and \
            int.from_bytes(head[_EXT_INCOMPAT_AT:_EXT_INCOMPAT_AT + 4], "little") & \
            _EXT_INCOMPAT_EXTENTS:
        return "ext4"
    return None


def _first_data(device: str) -> int | None:
    """The offset of the first mebibyte holding a non-zero byte, or None when it is all
    zeros. The edges are read first: a header or a filesystem's superblock sits there, so
    a device holding data is most often refused after two reads."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size: int = os.lseek(fd, 0, os.SEEK_END)
        edges = (0, max(0, size - _PROBE_BYTES))
        for offset in itertools.chain(edges, range(_PROBE_BYTES, size - _PROBE_BYTES,
                                                   _PROBE_BYTES)):
            chunk = os.pread(fd, _PROBE_BYTES, offset)
            if chunk.count(0) != len(chunk):
                return offset
        return None
    finally:
        os.close(fd)


def require_blank(device: str) -> None:
    """Refuse (FailedPrecondition) a device that holds a signature or any non-zero byte.
    Reads the whole device: for a device its pool cannot prove never written."""
    found = signatures(device)
    if found:
        raise FailedPrecondition(
            f"{device} already holds {', '.join(found)}; cryptvol formats only blank devices"
        )
    offset = _first_data(device)
    if offset is not None:
        raise FailedPrecondition(
            f"{device} holds data of an unknown kind (non-zero bytes at offset {offset}); "
            "cryptvol formats only blank devices"
        )


def device_size(device: str) -> int:
    """A block device's size in bytes, as the kernel sees it now."""
    # sysfs counts 512-byte sectors whatever the logical block size; reading it avoids a
    # process start, which costs tens of milliseconds on a small or emulated node. The
    # device number finds it: without udev, /dev/mapper/NAME is a node of its own, not a
    # link to dm-N.
    try:
        rdev = os.stat(device).st_rdev
        with open(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/size") as f:
            return int(f.read().strip()) * 512
    except (OSError, ValueError):
        return int(run(["blockdev", "--getsize64", device], timeout=30).stdout.strip())


def kernel_name(device: str) -> str:
    """The kernel's name of a block device node ("dm-3", "loop0"), as sysfs and the kernel
    log know it. Found through the device number: without udev, /dev/mapper/<name> is a
    node of its own, not a link to /dev/dm-N."""
    try:
        rdev = os.stat(device).st_rdev
        return os.path.basename(os.readlink(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))
    except OSError:
        return os.path.basename(os.path.realpath(device))


def dm_suspended(device: str) -> bool:
    """Whether the device-mapper device `device` is suspended (its I/O queued, not served)."""
    try:
        with open(f"/sys/class/block/{kernel_name(device)}/dm/suspended") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
