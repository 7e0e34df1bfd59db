"""Long-running children start in their own process group, and stop takes all of it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptvol.system import process


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stop_ends_the_child_and_everything_it_spawned(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    proc = process.start(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the child never started its own child"
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    assert os.getpgid(grandchild) == proc.pid

    process.stop(proc, grace=2)

    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_start_uses_the_runners_small_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOMETHING_FROM_THE_CALLER", "no")
    out = tmp_path / "env"
    with open(out, "wb") as f:
        proc = process.start(["env"], env={"ASKED": "yes"}, stdout=f)
        proc.wait(timeout=10)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["ASKED"] == "yes"
    assert env["LC_ALL"] == "C"
    assert "SOMETHING_FROM_THE_CALLER" not in env


def test_stop_on_a_finished_process_returns_its_status() -> None:
    proc = process.start(["sh", "-c", "exit 3"])
    proc.wait(timeout=10)
    assert process.stop(proc) == 3
