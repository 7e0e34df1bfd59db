"""Block devices: prove one blank before anything formats it, read its size.

A device counts as blank only when `blkid` finds no signature on it (no LUKS header, no
filesystem, no partition table) AND its first and last mebibytes read back as zeros. The
second check catches data blkid does not recognise: formatting over it would destroy it.
"""

from __future__ import annotations

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


def _zero_edges(device: str) -> bool:
    fd = os.open(device, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        for offset in {0, max(0, size - _PROBE_BYTES)}:
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, _PROBE_BYTES)
            if chunk.count(0) != len(chunk):
                return False
        return True
    finally:
        os.close(fd)


def is_blank(device: str) -> bool:
    return not signatures(device) and _zero_edges(device)


def require_blank(device: str) -> None:
    found = signatures(device)
    if found:
        raise FailedPrecondition(
            f"{device} already holds {', '.join(found)}; cryptvol formats only blank devices"
        )
    if not _zero_edges(device):
        raise FailedPrecondition(
            f"{device} holds data of an unknown kind; cryptvol formats only blank devices"
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
