"""`cryptvol vm doctor`: which parts of the VM are here, cached, or missing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptvol.vm import zfs_module
from cryptvol.vm.accel import ACCEL_ENV, kvm_usable
from cryptvol.vm.host import dm_crypt_available
from cryptvol.vm.parts import CACHE_ENV, cached_state, resolve_cache_dir, static_busybox

# Host tools the VM build needs, and those the guest borrows from the host root.
_BUILD_TOOLS = ("qemu-system-x86_64", "apt-get", "dpkg-deb", "modprobe", "depmod", "cpio", "gzip")
_GUEST_TOOLS = (
    "cryptsetup", "lvm", "thin_check", "mkfs.ext4", "mkfs.xfs", "losetup", "zfs", "zpool",
)


@dataclass(frozen=True)
class Check:
    part: str
    present: bool
    detail: str


def doctor(cache_dir: Path | str | None = None) -> list[Check]:
    """Look, never build or boot: every answer comes from files and the cache."""
    root = resolve_cache_dir(cache_dir)
    checks = [
        Check(tool, shutil.which(tool) is not None, shutil.which(tool) or "not found")
        for tool in _BUILD_TOOLS
    ]
    busybox = static_busybox(root, build=False)
    checks.append(
        Check(
            "busybox (static)",
            busybox is not None,
            str(busybox) if busybox else "install busybox-static",
        )
    )
    writable = os.access(root if root.exists() else root.parent, os.W_OK)
    checks.append(Check("cache folder", writable, f"{root} (set {CACHE_ENV} to move it)"))
    release, kernel, initramfs = cached_state(root)
    checks.append(
        Check(
            "kernel cached",
            kernel,
            f"linux-image-{release}" if release else "no kernel package found",
        )
    )
    checks.append(
        Check(
            "initramfs cached",
            initramfs,
            "built for this init script and module list" if initramfs else "built on the next boot",
        )
    )
    if release is not None:
        zfs = zfs_module.cached(root, release)
        if zfs is None:
            detail = "built (dkms) with the other parts on the next boot"
        else:
            detail = zfs.problem or str(zfs.modules)
        checks.append(
            Check("zfs module cached", zfs is not None and zfs.modules is not None, detail)
        )
    usable, why = kvm_usable(None, root, probe=False)
    forced = os.environ.get(ACCEL_ENV)
    checks.append(
        Check("kvm usable", usable, f"{why}; forced: {ACCEL_ENV}={forced}" if forced else why)
    )
    checks.append(
        Check(
            "dm-crypt on host",
            dm_crypt_available(),
            "node tests run on the host" if dm_crypt_available() else "node tests run in the VM",
        )
    )
    checks.extend(
        Check(
            f"{tool} (used in the guest)",
            shutil.which(tool) is not None,
            shutil.which(tool) or "not found",
        )
        for tool in _GUEST_TOOLS
    )
    return checks
