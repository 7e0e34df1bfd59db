"""Boot the VM, run one command in it, stream its output, return its exit code.

The host and the guest talk only through files in the work folder, shared writable over 9p:
the host writes `.cryptvol-vm/{work_path,keep_paths,command.sh}` before boot; the guest's
init appends the command's output to `stdout` and `stderr` there while it runs (the host
tails them, so output streams live) and writes `exit_code` last. A guest that never writes
`exit_code` (panic, hang, a broken init) is a `VmError` carrying the serial console's tail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from cryptvol.system import process
from cryptvol.system.runner import command_env
from cryptvol.vm import zfs_module
from cryptvol.vm.errors import VmError, VmUnavailable
from cryptvol.vm.guest_init import CONTROL_DIR, HOSTROOT_TAG, WORK_TAG
from cryptvol.vm.parts import Parts, ensure_parts

QEMU = "qemu-system-x86_64"
MEMORY_ENV = "CRYPTVOL_VM_MEMORY_MIB"
DEFAULT_MEMORY_MIB = 3072
CPU_ENV = "CRYPTVOL_VM_CPU"
# Under TCG, Python imports in the guest ran 30% (idle host) to 2.5 times (busy host)
# slower with `-cpu max` (AVX and all, emulated) than with this pre-AVX model; AES-NI
# stays, for dm-crypt.
TCG_CPU = "Nehalem,+aes,+pclmulqdq"
# Set in the guest so code and tests know they run in the throwaway VM.
IN_VM_ENV = "CRYPTVOL_IN_VM"
# Folders the guest covers with a tmpfs; host paths under them must be bound back in.
_GUEST_TMPFS = ("/tmp", "/run", "/etc/lvm")
_SERIAL_TAIL_LINES = 40
# After the guest reported, how long it gets to power off before it is killed.
_POWEROFF_GRACE = 15.0
_POLL = 0.05
# A minimal firmware that boots a -kernel image seconds sooner than SeaBIOS under TCG.
_QBOOT = Path("/usr/share/qemu/qboot.rom")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc|\r")


def run_in_vm(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    work_dir: str | os.PathLike[str] | None = None,
    output: BinaryIO | None = None,
    error_output: BinaryIO | None = None,
    memory_mib: int | None = None,
    accel: str | None = None,
    parts: Parts | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Run `argv` in a fresh VM as root in the host's root and return its exit code.

    `cwd` (default: the current folder) and `env` (added to a small default environment)
    apply to the command. `work_dir` is the folder the guest may write to at the same path
    (default: a temporary folder, removed afterwards); the rest of the host is read-only and
    /tmp is a tmpfs. Output goes to `output` and `error_output` (default: this process's
    stdout and stderr) while the command runs. Raises `VmError` on a timeout (which counts
    from the start of the boot), a panic, or a guest that never reported, and when `cancel`
    is set before the command has finished (the VM is stopped).
    """
    if not argv:
        raise ValueError("run_in_vm needs a command")
    out = output if output is not None else sys.stdout.buffer
    err = error_output if error_output is not None else sys.stderr.buffer
    parts = parts if parts is not None else ensure_parts()
    if accel is None:
        from cryptvol.vm.accel import choose_accel  # the probe boots a VM through here

        accel = choose_accel(parts)
    owns_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="cryptvol-vm-")) if work_dir is None else Path(work_dir)
    work = work.resolve()
    env = {**zfs_module.guest_env(parts.zfs), **(env or {})}
    try:
        ctl = _prepare_control(work, argv, Path(cwd or os.getcwd()).resolve(), env)
        return _boot_and_wait(parts, ctl, work, argv, timeout, out, err, memory_mib, accel,
                              cancel or threading.Event())
    finally:
        if owns_work:
            shutil.rmtree(work, ignore_errors=True)


def guest_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command's environment in the guest: the runner's rules, plus what the VM implies."""
    env = command_env(
        {
            "HOME": "/root",
            "TMPDIR": "/tmp",
            IN_VM_ENV: "1",
            # The host root is read-only in the guest: no point trying to cache bytecode.
            "PYTHONDONTWRITEBYTECODE": "1",
            # The guest has no udev; dmsetup and LVM must not wait for it.
            "DM_DISABLE_UDEV": "1",
        }
    )
    env.update(extra or {})
    return env


def qemu_argv(parts: Parts, work: Path, serial_log: Path, memory_mib: int, accel: str) -> list[str]:
    return [
        QEMU,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else os.environ.get(CPU_ENV) or TCG_CPU,
        "-smp",
        "2",
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-serial",
        f"file:{serial_log}",
        *(["-bios", _QBOOT.name] if _QBOOT.is_file() else []),
        "-kernel",
        str(parts.kernel),
        "-initrd",
        str(parts.initramfs),
        # panic=-1 turns a panic into a reboot, which -no-reboot turns into QEMU exiting.
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 mitigations=off",
        "-device",
        "virtio-rng-pci",
        "-virtfs",
        f"local,path=/,mount_tag={HOSTROOT_TAG},security_model=passthrough,"
        "readonly=on,multidevs=remap",
        # security_model=none: like passthrough, but a host run by a non-root user
        # ignores the guest's chown instead of failing the write.
        "-virtfs",
        f"local,path={_qemu_opt(str(work))},mount_tag={WORK_TAG},security_model=none,"
        "multidevs=remap",
    ]


def serial_tail(path: Path, lines: int = _SERIAL_TAIL_LINES) -> str:
    try:
        raw = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    text = _ANSI.sub(b"", raw).decode(errors="replace").splitlines()
    tail = text[-lines:]
    # A panic's stack trace can push its one-line reason out of the tail: keep it on top.
    reasons = [ln for ln in text[:-lines] if "Kernel panic" in ln]
    return "\n".join(reasons[-1:] + tail)


def _prepare_control(work: Path, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Path:
    ctl = work / CONTROL_DIR
    if ctl.exists():
        shutil.rmtree(ctl)
    ctl.mkdir(parents=True)
    (ctl / "work_path").write_text(f"{work}\n")
    keep = _keep_paths([cwd, Path(sys.prefix).resolve()], work)
    (ctl / "keep_paths").write_text("".join(f"{p}\n" for p in keep))
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(guest_env(env).items()))
    (ctl / "command.sh").write_text(
        f"cd -- {shlex.quote(str(cwd))} || exit 125\n"
        f"exec /usr/bin/env -i {assignments} {shlex.join(argv)}\n"
    )
    for name in ("stdout", "stderr"):
        (ctl / name).write_bytes(b"")
    return ctl


def _keep_paths(paths: Sequence[Path], work: Path) -> list[Path]:
    """Host folders under the guest's tmpfs mounts that the command needs to see."""
    keep: list[Path] = []
    for path in paths:
        hidden = any(path == Path(t) or Path(t) in path.parents for t in _GUEST_TMPFS)
        covered = any(k == path or k in path.parents for k in keep)
        in_work = path == work or work in path.parents
        if hidden and not covered and not in_work and path.is_dir():
            keep.append(path)
    return keep


def _boot_and_wait(
    parts: Parts,
    ctl: Path,
    work: Path,
    argv: Sequence[str],
    timeout: float,
    out: BinaryIO,
    err: BinaryIO,
    memory_mib: int | None,
    accel: str,
    cancel: threading.Event,
) -> int:
    if shutil.which(QEMU) is None:
        raise VmUnavailable(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    memory = memory_mib or int(os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_MIB)
    serial = ctl / "serial.log"
    exit_file = ctl / "exit_code"
    started = time.monotonic()
    with open(ctl / "qemu.log", "wb") as qemu_log:
        proc = process.start(
            qemu_argv(parts, work, serial, memory, accel), stdout=qemu_log, stderr=qemu_log
        )
    pumps = [_Pump(ctl / "stdout", out), _Pump(ctl / "stderr", err)]
    try:
        reported_at: float | None = None
        while True:
            for pump in pumps:
                pump.drain()
            if reported_at is None and exit_file.exists():
                reported_at = time.monotonic()
            if proc.poll() is not None:
                break
            now = time.monotonic()
            if reported_at is not None and now - reported_at > _POWEROFF_GRACE:
                break  # the command finished; a guest slow to power off is not its fault
            if reported_at is None and cancel.is_set():
                process.stop(proc)
                raise VmError(f"the VM was stopped before the command finished: "
                              f"{_shorten(shlex.join(argv))}", serial_tail(serial))
            if reported_at is None and now - started > timeout:
                process.stop(proc)
                raise VmError(
                    f"the command in the VM timed out after {timeout:g} s, VM killed: "
                    f"{_shorten(shlex.join(argv))}",
                    serial_tail(serial),
                )
            time.sleep(_POLL)
    finally:
        process.stop(proc)
        for pump in pumps:
            pump.drain()
    code = _read_exit_code(exit_file)
    if code is None:
        qemu_said = (ctl / "qemu.log").read_text(errors="replace").strip()[-1000:]
        detail = f"; QEMU said: {qemu_said}" if qemu_said else ""
        raise VmError(
            f"the VM stopped without reporting the command's exit code "
            f"(QEMU exit status {proc.returncode}){detail}",
            serial_tail(serial),
        )
    return code


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _qemu_opt(value: str) -> str:
    # QEMU's option syntax splits on commas; a doubled comma is a literal one.
    return value.replace(",", ",,")


class _Pump:
    """Copies what the guest appended to a file since the last call to a stream."""

    def __init__(self, path: Path, sink: BinaryIO) -> None:
        self._path = path
        self._sink = sink
        self._offset = 0

    def drain(self) -> None:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        if data:
            self._offset += len(data)
            self._sink.write(data)
            self._sink.flush()
