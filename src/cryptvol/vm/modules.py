"""Kernel modules for the VM: which files to load in which order, copied so they load fast.

Both the initramfs (storage modules) and the ZFS part (modules dkms built) take their
modules through here.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Sequence
from pathlib import Path

from cryptvol.system.runner import run
from cryptvol.vm.errors import VmUnavailable

SIG_MAGIC = b"~Module signature appended~\n"


def module_load_order(
    tree: Path, release: str, required: Sequence[str], optional: Sequence[str] = ()
) -> list[Path]:
    """Module files for the wanted modules in the unpacked kernel `tree`, dependencies
    first, each once. A required module the kernel lacks is a `VmUnavailable`."""
    ordered: list[Path] = []
    seen: set[Path] = set()
    for name, needed in [(m, True) for m in required] + [(m, False) for m in optional]:
        result = run(
            ["modprobe", "-d", str(tree), "-S", release, "--show-depends", name],
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            if needed:
                raise VmUnavailable(
                    f"kernel {release} has no module {name}: {result.stderr.strip()}"
                )
            continue
        for line in result.stdout.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                if path not in seen:
                    seen.add(path)
                    ordered.append(path)
    return ordered


def copy_module(src: Path, dest: Path) -> Path:
    """Copy a module uncompressed (busybox's insmod may not read compressed ones) and
    without its signature: checking it under TCG cost seconds per boot, and this throwaway
    kernel does not enforce signatures (an unsigned module only taints it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".xz":
        dest = dest.with_suffix("")
        with lzma.open(src) as f:
            data = f.read()
    elif src.suffix == ".zst":
        dest = dest.with_suffix("")
        run(["zstd", "-q", "-d", "-f", "-o", str(dest), str(src)], timeout=60)
        data = dest.read_bytes()
    else:
        data = src.read_bytes()
    dest.write_bytes(without_signature(data))
    return dest


def without_signature(module: bytes) -> bytes:
    # Layout at the end of a signed module: signature, struct module_signature (12 bytes,
    # big-endian signature length last), then the magic string.
    if not module.endswith(SIG_MAGIC):
        return module
    info_end = len(module) - len(SIG_MAGIC)
    (sig_len,) = struct.unpack_from(">I", module, info_end - 4)
    return module[: info_end - 12 - sig_len]
