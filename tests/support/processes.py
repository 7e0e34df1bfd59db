"""Stop a cryptvol server process the way its tests expect: SIGTERM, and never a leak."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def stop_server(proc: subprocess.Popen[bytes], what: str, log_tail: Callable[[], str]) -> int:
    """SIGTERM `proc` and return its exit code. One that does not exit within a minute is
    asked for its threads' stacks (SIGUSR1, which cryptvol's servers answer into their
    log), killed, and reported with `log_tail()`: it must not outlive the test."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        dump_stacks(proc)
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} did not stop on SIGTERM:\n{log_tail()}") from None


def dump_stacks(proc: subprocess.Popen[bytes]) -> None:
    """Ask a cryptvol server for every thread's stack (SIGUSR1: it writes them to its log,
    and does nothing else) and give it a moment to write them."""
    proc.send_signal(signal.SIGUSR1)
    time.sleep(2)
