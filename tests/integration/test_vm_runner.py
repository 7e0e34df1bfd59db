"""The test VM runs one command on a real kernel, and fails loudly when the guest does.

These boot real QEMU VMs (TCG here), a dozen seconds or more each.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryptvol.vm import VmError, ensure_parts, run_in_vm

# In CI these must run: a missing QEMU there fails them instead.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and shutil.which("qemu-system-x86_64") is None,
    reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
)

# Long enough for a boot on a busy 2-core host; the hang test waits this long.
BOOT_BUDGET = 90.0


def qemu_processes_using(path: Path) -> list[int]:
    """PIDs of QEMU processes whose command line names `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and b"qemu-system" in cmdline[0]
            and any(str(path).encode() in a for a in cmdline)
        ):
            found.append(int(entry.name))
    return found


def test_a_command_runs_as_root_on_a_kernel_with_device_mapper(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    work = tmp_path / "work"
    work.mkdir()
    script = (
        'echo "cwd=$(pwd) greeting=$GREETING"; '
        "grep -w device-mapper /proc/misc; "
        'echo written > "$WORK/from-guest"; '
        "echo to-stderr >&2"
    )
    code = run_in_vm(
        ["sh", "-c", script],
        cwd="/usr",
        env={"GREETING": "hello", "WORK": str(work)},
        work_dir=work,
        output=out,
        error_output=err,
        timeout=BOOT_BUDGET * 2,
    )
    assert code == 0, err.getvalue().decode()
    stdout = out.getvalue().decode()
    assert "cwd=/usr greeting=hello" in stdout
    assert "device-mapper" in stdout
    assert err.getvalue().decode().strip() == "to-stderr"
    assert (work / "from-guest").read_text() == "written\n"


def test_a_failing_command_shows_its_exit_code_and_stderr() -> None:
    cli = [sys.executable, "-c", "from cryptvol.cli.vm import vm_group; vm_group()"]
    result = subprocess.run(
        [
            *cli,
            "run",
            "--timeout",
            str(BOOT_BUDGET * 2),
            "--",
            "sh",
            "-c",
            "echo 'cannot open /dev/nowhere' >&2; exit 42",
        ],
        capture_output=True,
        text=True,
        timeout=BOOT_BUDGET * 3,
        check=False,
    )
    assert result.returncode == 42
    assert "cannot open /dev/nowhere" in result.stderr


def test_a_hanging_command_times_out_with_the_serial_tail_and_leaves_no_qemu(
    tmp_path: Path,
) -> None:
    ensure_parts()  # a cold cache must not eat the command's time budget
    work = tmp_path / "hang"
    work.mkdir()
    with pytest.raises(VmError) as failed:
        run_in_vm(
            ["sleep", "3600"],
            cwd="/",
            work_dir=work,
            timeout=BOOT_BUDGET,
            output=io.BytesIO(),
            error_output=io.BytesIO(),
        )
    message = str(failed.value)
    assert f"timed out after {BOOT_BUDGET:g} s" in message
    assert "serial console" in message
    assert "cryptvol-vm: running the command" in failed.value.serial_tail
    assert qemu_processes_using(work) == []


def test_a_kernel_panic_is_reported_with_the_serial_tail(tmp_path: Path) -> None:
    work = tmp_path / "panic"
    work.mkdir()
    with pytest.raises(VmError) as failed:
        # sysrq-c crashes the kernel on purpose.
        run_in_vm(
            ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 3600"],
            cwd="/",
            work_dir=work,
            timeout=BOOT_BUDGET * 2,
            output=io.BytesIO(),
            error_output=io.BytesIO(),
        )
    assert "without reporting the command's exit code" in str(failed.value)
    assert "Kernel panic" in failed.value.serial_tail
    assert qemu_processes_using(work) == []
