"""Signals for long-running commands: SIGTERM and SIGINT caught from the start and waited
for safely; SIGUSR1 for a stack dump."""

from __future__ import annotations

import faulthandler
import signal
import threading

# How often the waiting main thread wakes up. Python runs a signal's handler in the main
# thread between bytecodes; when the kernel hands the signal to another thread (gRPC's own,
# say), a main thread blocked for good in a lock never gets to run it. Seen: a driver that
# outlived its SIGTERM.
_WAKE_SECONDS = 0.2


class StopSignals:
    """Catches SIGTERM and SIGINT from the moment it is made, so one that arrives while the
    process is still starting is kept for `wait`, not fatal. Make it in the main thread.

    A server that does not stop can then be asked where it is: SIGUSR1 writes every
    thread's stack to stderr (its log), and does nothing else."""

    def __init__(self) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self._received: list[str] = []
        self._stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._received.append(signal.Signals(signum).name)
        self._stopping.set()

    def wait(self) -> str:
        """Block until one arrives; return its name."""
        while not self._stopping.wait(_WAKE_SECONDS):
            pass
        return self._received[0]
