"""The ZFS kernel modules for the VM's kernel: built by dkms on the host, cached, loaded in
the guest when a ZFS test asks for them.

Debian ships ZFS as source (zfs-dkms, in contrib); scripts/setup.sh installs it with the
headers of the VM's kernel, and dkms builds the modules then (minutes). Here the built
modules are collected once per kernel release and ZFS version into the VM cache:

    zfs/<release>-<zfs version>-<format>/modules   load order, paths relative to the folder
    zfs/<release>-<zfs version>-<format>/...       the .ko files: uncompressed, unsigned,
                                                   without debug info

The guest reads them from the host root (read-only) and insmods them in order: only
sessions that use ZFS pay for loading them, and the initramfs stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptvol.system.runner import CommandError, run
from cryptvol.vm.errors import VmUnavailable
from cryptvol.vm.modules import copy_module, module_load_order

# Told to the guest by run_in_vm: where the cached modules are, or why there are none.
MODULES_ENV = "CRYPTVOL_VM_ZFS_MODULES"
PROBLEM_ENV = "CRYPTVOL_VM_ZFS_PROBLEM"
# Bump when the way the cached folder is made changes.
_FORMAT = "1"
_DKMS_SOURCE = Path("/usr/src")
_DKMS_TREE = Path("/var/lib/dkms")
_BUILD_TIMEOUT = 3600.0
_VERSION = re.compile(r"^zfs-(\d[\w.~+-]*)$")


@dataclass(frozen=True)
class ZfsPart:
    """The cached modules' folder, or why there is none (the rest of the VM still works)."""

    modules: Path | None
    problem: str = ""
    built: bool = False


def source_version(source_root: Path = _DKMS_SOURCE) -> str | None:
    """The version of the ZFS source zfs-dkms installed, or None without it."""
    found = sorted(
        m.group(1)
        for p in source_root.glob("zfs-*")
        if (m := _VERSION.match(p.name)) and (p / "dkms.conf").is_file()
    )
    return found[-1] if found else None


def cached(root: Path, release: str) -> ZfsPart | None:
    """The cached part for this kernel and the installed ZFS source; None when it must be
    built first. Only looks."""
    version = source_version()
    if version is None:
        return ZfsPart(None, "zfs-dkms is not installed on the host; run scripts/setup.sh")
    folder = _folder(root, release, version)
    return ZfsPart(folder) if (folder / "modules").is_file() else None


def ensure(root: Path, release: str, kernel_deb: Path) -> ZfsPart:
    """Build (dkms) and cache the modules for `release`; say why not instead of raising.

    The caller holds the VM cache's lock."""
    found = cached(root, release)
    if found is not None:
        return found
    version = source_version()
    assert version is not None  # cached() said why otherwise
    try:
        built = _dkms_build(version, release)
        _collect(built, release, kernel_deb, _folder(root, release, version))
    except (VmUnavailable, CommandError) as exc:
        return ZfsPart(None, f"cannot build the ZFS {version} module for kernel {release}: {exc}")
    return ZfsPart(_folder(root, release, version), built=True)


def guest_env(part: ZfsPart | None) -> dict[str, str]:
    """What the guest is told about the ZFS part."""
    if part is not None and part.modules is not None:
        return {MODULES_ENV: str(part.modules)}
    return {PROBLEM_ENV: part.problem if part is not None else "no ZFS part was prepared"}


def load(arc_max_bytes: int = 256 * 1024 * 1024) -> None:
    """Load ZFS on this kernel: the cached modules in the VM, `modprobe zfs` elsewhere.

    The ARC is capped: by default it takes half the memory, which in the small VM is the
    tmpfs that the tests' pools live on."""
    if Path("/sys/module/zfs").exists():
        return
    folder = os.environ.get(MODULES_ENV)
    if not folder:
        problem = os.environ.get(PROBLEM_ENV)
        if problem:
            raise VmUnavailable(problem)
        run(["modprobe", "zfs", f"zfs_arc_max={arc_max_bytes}"], timeout=300)
        return
    base = Path(folder)
    for rel in (base / "modules").read_text().split():
        name = Path(rel).name.removesuffix(".ko").replace("-", "_")
        if Path("/sys/module", name).exists():
            continue
        extra = [f"zfs_arc_max={arc_max_bytes}"] if name == "zfs" else []
        run(["insmod", str(base / rel), *extra], timeout=300)


def _folder(root: Path, release: str, version: str) -> Path:
    return root / "zfs" / f"{release}-{version}-{_FORMAT}"


def _dkms_build(version: str, release: str) -> Path:
    """The folder of modules dkms built for `release`, building them if it has not."""
    out = _DKMS_TREE / "zfs" / version / release / "x86_64" / "module"
    if not list(out.glob("zfs.ko*")):
        if not Path(f"/usr/src/linux-headers-{release}").is_dir():
            raise VmUnavailable(
                f"linux-headers-{release} is not installed; run scripts/setup.sh"
            )
        run(["dkms", "build", "-m", "zfs", "-v", version, "-k", release],
            timeout=_BUILD_TIMEOUT)
    if not list(out.glob("zfs.ko*")):
        raise VmUnavailable(f"dkms reported success but left no zfs.ko in {out}")
    return out


def _collect(built: Path, release: str, kernel_deb: Path, dest: Path) -> None:
    """Copy the built modules and the kernel's own ones they need, in load order."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
        tree = Path(tmp) / "kernel"
        run(["dpkg-deb", "-x", str(kernel_deb), str(tree)], timeout=600)
        extra = tree / "lib" / "modules" / release / "updates" / "zfs"
        extra.mkdir(parents=True)
        for module in built.iterdir():
            shutil.copy2(module, extra / module.name)
        run(["depmod", "-b", str(tree), release], timeout=300)
        staged = Path(tmp) / "part"
        listed = []
        base = tree / "lib" / "modules" / release
        for module in module_load_order(tree, release, ["zfs"]):
            copied = copy_module(module, staged / module.relative_to(base))
            with contextlib.suppress(CommandError):
                # Debug info is most of a dkms-built module: without it, insmod over 9p
                # reads a fraction of the bytes.
                run(["strip", "--strip-debug", str(copied)], timeout=120)
            listed.append(str(copied.relative_to(staged)))
        (staged / "modules").write_text("\n".join(listed) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)
