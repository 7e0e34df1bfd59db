"""The VM's kernel and initramfs: fetched from Debian's registry by name, built once, cached.

Cache layout (one folder, `CRYPTVOL_VM_CACHE` or /var/cache/cryptvol/vm):

    lock                                  held while anything below is built
    kernels/<release>/vmlinuz             the kernel image as Debian ships it
    kernels/<release>/vmlinux             the same, uncompressed (boots faster under TCG)
    kernels/<release>/linux-image.deb     kept so a changed initramfs needs no download
    busybox/busybox                       only when the host has no static busybox
    initramfs/<release>-<key>.cpio.gz     key: hash of init script, module names, busybox

Everything is written to a temporary name and renamed into place, so a build that dies
leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import lzma
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptvol.system.runner import CommandError, run
from cryptvol.vm import zfs_module
from cryptvol.vm.errors import VmUnavailable
from cryptvol.vm.guest_init import INIT_SCRIPT
from cryptvol.vm.modules import copy_module, module_load_order
from cryptvol.vm.zfs_module import ZfsPart

CACHE_ENV = "CRYPTVOL_VM_CACHE"
DEFAULT_CACHE = Path("/var/cache/cryptvol/vm")
KERNEL_META_PACKAGE = "linux-image-amd64"

# What the node suite needs from the kernel; a kernel that lacks one of these is unusable.
REQUIRED_MODULES = (
    "dm-crypt",
    "dm-thin-pool",
    "dm-snapshot",
    "loop",
    "virtio_pci",
    "virtio_blk",
    "9p",
    "9pnet_virtio",
    "xts",
    "ext4",
    "xfs",
)
# Faster or smoother when present: AES-NI, an entropy source, the kernel crypto API
# cryptsetup uses for keyslots. The generic AES is built into Debian's kernel.
OPTIONAL_MODULES = ("aes", "aesni_intel", "virtio_rng", "algif_skcipher", "algif_hash")

_HOST_BUSYBOX = Path("/bin/busybox")
_KERNEL_NAME = re.compile(r"^linux-image-(\d[^\s]*-amd64)$")
_APT_TIMEOUT = 600.0
# Bump when the way the initramfs is built changes, so cached ones are rebuilt.
_INITRAMFS_FORMAT = "2"
# The ELF note (name "Xen", type 18: XEN_ELFNOTE_PHYS32_ENTRY) of a kernel with a PVH entry
# point, which QEMU needs to boot an uncompressed kernel.
_PVH_NOTE = re.compile(rb"\x04\x00\x00\x00.{4}\x12\x00\x00\x00Xen\x00", re.DOTALL)


@dataclass(frozen=True)
class Parts:
    """A bootable kernel and initramfs, and whether getting them built anything."""

    kernel_release: str
    kernel: Path  # an uncompressed ELF vmlinux where possible, else the bzImage
    initramfs: Path
    built: bool
    seconds: float
    cache_dir: Path
    # The ZFS modules for this kernel, or why there are none (ZFS tests say it then).
    zfs: ZfsPart | None = None


def resolve_cache_dir(explicit: Path | str | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def ensure_parts(cache_dir: Path | str | None = None) -> Parts:
    """Return the cached kernel and initramfs, fetching and building what is missing."""
    started = time.monotonic()
    root = resolve_cache_dir(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VmUnavailable(
            f"cannot create the VM cache {root} ({exc.strerror}); set {CACHE_ENV} to a "
            "writable folder"
        ) from None
    release = resolve_kernel_release(root)
    busybox = static_busybox(root, build=False)
    key = initramfs_key(release, busybox)
    vmlinuz = root / "kernels" / release / "vmlinuz"
    initramfs = root / "initramfs" / f"{release}-{key}.cpio.gz"
    zfs = zfs_module.cached(root, release)
    if (vmlinuz.is_file() and initramfs.is_file() and _kernel_settled(vmlinuz)
            and zfs is not None):
        seconds = time.monotonic() - started
        return Parts(release, _bootable(vmlinuz), initramfs, False, seconds, root, zfs)
    with _locked(root):
        # Another process may have built it while we waited for the lock.
        busybox = static_busybox(root, build=True)
        key = initramfs_key(release, busybox)
        initramfs = root / "initramfs" / f"{release}-{key}.cpio.gz"
        deb = _fetch_kernel(root, release)
        if not initramfs.is_file():
            _build_initramfs(root, release, deb, busybox, initramfs)
        zfs = zfs_module.ensure(root, release, deb)
    seconds = time.monotonic() - started
    return Parts(release, _bootable(vmlinuz), initramfs, True, seconds, root, zfs)


def _bootable(vmlinuz: Path) -> Path:
    elf = vmlinuz.with_name("vmlinux")
    return elf if elf.is_file() else vmlinuz


def cached_state(cache_dir: Path | str | None = None) -> tuple[str | None, bool, bool]:
    """(newest kernel release known, its kernel cached?, an initramfs for it cached?).

    Only looks: it never downloads, builds, or refreshes the package lists.
    """
    root = resolve_cache_dir(cache_dir)
    try:
        release: str | None = resolve_kernel_release(root, refresh=False)
    except VmUnavailable:
        release = None
    if release is None:
        return None, False, False
    kernel = (root / "kernels" / release / "vmlinuz").is_file()
    busybox = static_busybox(root, build=False)
    initramfs = (
        busybox is not None
        and (root / "initramfs" / f"{release}-{initramfs_key(release, busybox)}.cpio.gz").is_file()
    )
    return release, kernel, initramfs


def resolve_kernel_release(cache: Path, *, refresh: bool = True) -> str:
    """The release (`uname -r` form) of the kernel Debian's meta-package points at now.

    With no package lists yet, `refresh` runs `apt-get update` (as root). Without lists
    (offline, not root), the newest kernel already cached serves.
    """
    # apt-cache takes a second or more to load its lists, so its answer is remembered
    # for as long as the lists are unchanged.
    memo = cache / "kernel-release"
    stamp = _apt_lists_stamp()
    with contextlib.suppress(OSError, ValueError):
        remembered_stamp, remembered = memo.read_text().split()
        if stamp and remembered_stamp == stamp:
            return remembered
    release = _release_from_apt()
    if release is None and refresh:
        _refresh_apt_lists()
        stamp = _apt_lists_stamp()
        release = _release_from_apt()
    if release is not None:
        if stamp:
            with contextlib.suppress(OSError):
                memo.write_text(f"{stamp} {release}\n")
        return release
    kernels = cache / "kernels"
    cached = (
        sorted(
            (p.name for p in kernels.glob("*") if (p / "vmlinuz").is_file()),
            key=_release_sort_key,
        )
        if kernels.is_dir()
        else []
    )
    if cached:
        return cached[-1]
    raise VmUnavailable(
        f"cannot find the {KERNEL_META_PACKAGE} package: run `apt-get update` as root, "
        "then try again"
    )


def initramfs_key(release: str, busybox: Path | None) -> str:
    digest = hashlib.sha256()
    for part in (
        _INITRAMFS_FORMAT,
        release,
        INIT_SCRIPT,
        *REQUIRED_MODULES,
        "|",
        *OPTIONAL_MODULES,
    ):
        digest.update(part.encode() + b"\0")
    if busybox is not None:
        digest.update(_file_sha256(busybox).encode())
    return digest.hexdigest()[:16]


def _release_from_apt() -> str | None:
    try:
        out = run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60).stdout
    except CommandError:
        return None
    for line in out.splitlines():
        name = line.strip().split(":", 1)[-1].strip()
        if line.strip().startswith(("Depends:", "|Depends:")):
            match = _KERNEL_NAME.match(name)
            if match and "-cloud-" not in name and "-rt-" not in name:
                return match.group(1)
    return None


def _apt_lists_stamp() -> str:
    """Changes whenever `apt-get update` fetched new package lists."""
    lists = Path("/var/lib/apt/lists")
    try:
        newest = max(
            (p.stat().st_mtime_ns for p in lists.iterdir() if "Packages" in p.name),
            default=0,
        )
    except OSError:
        return ""
    return str(newest) if newest else ""


def _refresh_apt_lists() -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(CommandError):
        run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=600"], timeout=_APT_TIMEOUT)


def _fetch_kernel(root: Path, release: str) -> Path:
    """The kernel package, downloaded and its kernel image unpacked into the cache once."""
    kdir = root / "kernels" / release
    deb = kdir / "linux-image.deb"
    vmlinuz = kdir / "vmlinuz"
    if not (deb.is_file() and vmlinuz.is_file()):
        kdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            _download(f"linux-image-{release}", Path(tmp))
            (got,) = Path(tmp).glob("*.deb")
            tree = Path(tmp) / "tree"
            run(["dpkg-deb", "-x", str(got), str(tree)], timeout=_APT_TIMEOUT)
            image = tree / "boot" / f"vmlinuz-{release}"
            if not image.is_file():
                raise VmUnavailable(f"linux-image-{release} has no /boot/vmlinuz-{release}")
            _install(image, vmlinuz)
            _install(got, deb)
    if not _kernel_settled(vmlinuz):
        elf = _uncompressed_kernel(vmlinuz)
        if elf is not None and _PVH_NOTE.search(elf):
            partial = kdir / ".vmlinux.part"
            partial.write_bytes(elf)
            os.replace(partial, kdir / "vmlinux")
        else:
            (kdir / "vmlinux.none").touch()
    return deb


def _kernel_settled(vmlinuz: Path) -> bool:
    """Whether the uncompressed kernel was made, or found impossible, already."""
    return vmlinuz.with_name("vmlinux").is_file() or vmlinuz.with_name("vmlinux.none").exists()


def _uncompressed_kernel(bzimage: Path) -> bytes | None:
    """The ELF kernel inside a bzImage, when it is xz- or gzip-compressed.

    Under TCG, decompressing the kernel at boot costs seconds; QEMU boots the ELF
    directly through its PVH entry point instead (when the kernel has one: `_PVH_NOTE`).
    """
    data = bzimage.read_bytes()
    for magic, make in (
        (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor()),
        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        at = data.find(magic)
        if at < 0:
            continue
        try:
            elf = make().decompress(data[at:])
        except (lzma.LZMAError, zlib.error):
            continue
        if elf[:4] == b"\x7fELF":
            return elf
    return None


def _download(package: str, into: Path) -> None:
    # apt-get download writes into its working directory.
    try:
        run(["apt-get", "download", package], cwd=str(into), timeout=_APT_TIMEOUT)
    except CommandError as exc:
        raise VmUnavailable(f"cannot download {package} from the package registry: {exc}") from None


def static_busybox(root: Path, *, build: bool) -> Path | None:
    """A statically linked busybox: the host's if it is one, else busybox-static's."""
    if _is_static_elf(_HOST_BUSYBOX):
        return _HOST_BUSYBOX
    cached = root / "busybox" / "busybox"
    if cached.is_file() or not build:
        return cached if cached.is_file() else None
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        _download("busybox-static", Path(tmp))
        (got,) = Path(tmp).glob("*.deb")
        run(["dpkg-deb", "-x", str(got), str(Path(tmp) / "tree")], timeout=120)
        _install(Path(tmp) / "tree" / "bin" / "busybox", cached)
    return cached


def _build_initramfs(root: Path, release: str, deb: Path, busybox: Path | None, out: Path) -> None:
    if busybox is None:
        raise VmUnavailable("no static busybox: install busybox-static")
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        tree = Path(tmp) / "kernel"
        run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=_APT_TIMEOUT)
        run(["depmod", "-b", str(tree), release], timeout=300)
        modules = module_load_order(tree, release, REQUIRED_MODULES, OPTIONAL_MODULES)
        stage = Path(tmp) / "initramfs"
        for sub in ("bin", "dev", "proc", "sys", "etc/cryptvol", "tmp"):
            (stage / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, stage / "bin" / "busybox")
        listed = []
        for module in modules:
            rel = module.relative_to(tree / "lib" / "modules")
            listed.append(
                str(
                    copy_module(module, stage / "lib" / "modules" / rel).relative_to(
                        stage / "lib" / "modules"
                    )
                )
            )
        (stage / "etc" / "cryptvol" / "modules").write_text("\n".join(listed) + "\n")
        init = stage / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        packed = Path(tmp) / "initramfs.cpio.gz"
        run(
            [
                "bash",
                "-c",
                'set -euo pipefail; cd "$1"; find . -print0 | LC_ALL=C sort -z'
                ' | cpio --null --quiet -o -H newc -R 0:0 | gzip -6n > "$2"',
                "bash",
                str(stage),
                str(packed),
            ],
            timeout=300,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        _install(packed, out)


def _install(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / "lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _release_sort_key(release: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", release)]
