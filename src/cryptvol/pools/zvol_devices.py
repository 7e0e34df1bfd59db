"""Zvols as block devices, found without udev.

A zvol's device is /dev/zdN. udev links it as /dev/zvol/POOL/NAME, but a node without udev
(the test VM, some minimal hosts) has only the zd devices: each is asked its dataset name
with the BLKZNAME ioctl, and a node missing from /dev (no devtmpfs) is made from sysfs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from cryptvol.errors import FailedPrecondition

# ioctl BLKZNAME = _IOR(0x12, 125, char[ZFS_MAX_DATASET_NAME_LEN = 256]): a zvol's name.
_NAME_LEN = 256
BLKZNAME = (2 << 30) | (_NAME_LEN << 16) | (0x12 << 8) | 125
_DEVICE_WAIT = 30.0


class ZvolDevices:
    """Which /dev/zdN is which zvol, with or without udev.

    udev's /dev/zvol/POOL/NAME links are used when present and confirmed; otherwise each
    zd device in sysfs is asked its dataset name (what udev itself does once per device).
    An open zvol cannot be destroyed ("dataset is busy"), so asking every device on every
    lookup could fail a concurrent delete of another volume: each answer is remembered
    with the device's diskseq (new for every disk the kernel makes, so a reused minor is
    asked again), and a device is asked once in its life here. A device node missing from
    `dev_dir` (no devtmpfs) is made from the numbers sysfs gives."""

    def __init__(self, dev_dir: Path = Path("/dev"), sys_block: Path = Path("/sys/block")):
        self.dev_dir = dev_dir
        self.sys_block = sys_block
        self._names: dict[tuple[str, str], str] = {}  # (device, diskseq) -> zvol name

    def find(self, dataset: str) -> str | None:
        link = self.dev_dir / "zvol" / dataset
        if link.exists():
            resolved = os.path.realpath(link)
            if _zvol_name(resolved) == dataset:
                return resolved
        for entry in sorted(self.sys_block.glob("zd*")):
            node = self._node(entry)
            if node is None:
                continue
            key = (node, _read(entry / "diskseq"))
            name = self._names.get(key) if key[1] else None
            if name is not None and name != dataset:
                continue
            # Ours by the record (confirmed: it may have been renamed since), or unknown.
            name = _zvol_name(node)
            if name is None:
                continue
            if key[1]:
                self._names[key] = name
            if name == dataset:
                return node
        return None

    def forget(self, *datasets: str) -> None:
        """Drop what is known of zvols about to be renamed."""
        for key, name in list(self._names.items()):
            if name in datasets:
                self._names.pop(key, None)

    def wait(self, dataset: str, timeout: float = _DEVICE_WAIT) -> str:
        """The zvol's device, once ZFS made it (minors appear asynchronously)."""
        deadline = time.monotonic() + timeout
        while (device := self.find(dataset)) is None:
            if time.monotonic() > deadline:
                # Renamed by someone else since it was asked: ask every device once more.
                self._names.clear()
                if (device := self.find(dataset)) is not None:
                    return device
                raise FailedPrecondition(
                    f"zvol {dataset} has no block device after {timeout:g} s; check its "
                    "volmode (dev) and the zvol_inhibit_dev module parameter (0)"
                )
            time.sleep(0.05)
        return device

    def _node(self, entry: Path) -> str | None:
        node = self.dev_dir / entry.name
        if node.exists():
            return str(node)
        try:
            major, minor = (int(n) for n in (entry / "dev").read_text().split(":"))
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        except FileExistsError:
            pass
        except (OSError, ValueError):
            return None  # gone between the listing and now
        return str(node)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _zvol_name(device: str) -> str | None:
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = bytearray(_NAME_LEN)
        fcntl.ioctl(fd, BLKZNAME, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    return bytes(buf).split(b"\0", 1)[0].decode(errors="replace")


def held(device: str) -> bool:
    """Whether something holds the device: a dm-crypt mapping over it, or a mount."""
    name = os.path.basename(os.path.realpath(device))
    holders = Path(f"/sys/class/block/{name}/holders")
    if holders.is_dir() and any(holders.iterdir()):
        return True
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False
