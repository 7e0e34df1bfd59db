"""Choose QEMU's accelerator: KVM only where a real boot under it was seen to finish.

Some hosts expose a /dev/kvm that opens fine and then hangs the guest (nested setups that
do not pass through enough of the CPU), so the only trustworthy probe is a boot with a tight
time limit. Its answer is cached per host kernel and QEMU build, so only the first run on a
machine pays for it. `CRYPTVOL_VM_ACCEL=tcg|kvm` skips the probe.

One host is known without a boot: a /dev/kvm served by PVM alone (the `kvm_pvm` module, no
`kvm_intel` or `kvm_amd`), as in cloud sandboxes whose CPU shows neither VT-x nor AMD-V.
PVM runs only guest kernels built as PVM guests; Debian's kernel, which the VM boots, is not
one, so QEMU fails or the guest stops after its kernel is decompressed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
from pathlib import Path

from cryptvol.vm.errors import VmError, VmUnavailable
from cryptvol.vm.parts import Parts, resolve_cache_dir

ACCEL_ENV = "CRYPTVOL_VM_ACCEL"
ACCELS = ("tcg", "kvm")
# A working KVM boots and runs `true` in a few seconds; a hanging one never does.
PROBE_TIMEOUT = 20.0
_PROBE_FILE = "kvm-probe.json"
SYS_MODULE = Path("/sys/module")


def choose_accel(parts: Parts) -> str:
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise VmUnavailable(f"{ACCEL_ENV}={forced!r}: expected one of {', '.join(ACCELS)}")
        return forced
    usable, _ = kvm_usable(parts, parts.cache_dir)
    return "kvm" if usable else "tcg"


def kvm_usable(
    parts: Parts | None, cache: Path | None = None, *, probe: bool = True
) -> tuple[bool, str]:
    """(usable?, why). Without `probe`, an unprobed host answers from /dev/kvm alone."""
    if not _dev_kvm_opens():
        return False, "/dev/kvm is missing or cannot be opened read-write"
    if pvm_only():
        return False, (
            "/dev/kvm is PVM's (module kvm_pvm, no kvm_intel or kvm_amd): it runs only guest"
            " kernels built as PVM guests, and the VM's Debian kernel is not one; using TCG"
        )
    memo = resolve_cache_dir(cache) / _PROBE_FILE
    key = _probe_key()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text())
        if known["key"] == key:
            return bool(known["usable"]), str(known["detail"])
    if not probe or parts is None:
        return False, "/dev/kvm opens, not probed yet (a boot under KVM decides)"
    usable, detail = _probe(parts)
    with contextlib.suppress(OSError):
        memo.write_text(json.dumps({"key": key, "usable": usable, "detail": detail}))
    return usable, detail


def _probe(parts: Parts) -> tuple[bool, str]:
    from cryptvol.vm.boot import run_in_vm  # boot imports this module lazily too

    sink = io.BytesIO()
    try:
        code = run_in_vm(
            ["true"],
            cwd="/",
            timeout=PROBE_TIMEOUT,
            output=sink,
            error_output=sink,
            memory_mib=512,
            accel="kvm",
            parts=parts,
        )
    except VmError as exc:
        first = str(exc).splitlines()[0]
        return False, f"a boot under KVM failed, using TCG: {first}"
    if code != 0:
        return False, f"a boot under KVM ran `true` with exit code {code}, using TCG"
    return True, f"a boot under KVM finished within {PROBE_TIMEOUT:g} s"


def pvm_only(sys_module: Path = SYS_MODULE) -> bool:
    """Whether the host's KVM is PVM (pagetable-based, without hardware virtualization)."""
    loaded = {name for name in ("kvm_pvm", "kvm_intel", "kvm_amd") if (sys_module / name).is_dir()}
    return loaded == {"kvm_pvm"}


def _dev_kvm_opens() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_key() -> str:
    qemu = shutil.which("qemu-system-x86_64") or ""
    try:
        st = os.stat(qemu)
        build = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        build = "none"
    return f"{platform.release()}|{build}"
