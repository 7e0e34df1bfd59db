"""The summed resident memory of this process's cryptsetup children, read from /proc."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


def _child_status(entry: Path) -> list[str]:
    """The /proc status lines of a cryptsetup child of this process; else none (other work
    on the machine may run cryptsetup too)."""
    if (entry / "comm").read_text().strip() != "cryptsetup":
        return []
    lines = (entry / "status").read_text().splitlines()
    ppid = next((ln.split()[1] for ln in lines if ln.startswith("PPid:")), "")
    return lines if ppid == str(os.getpid()) else []


def cryptsetup_rss_kib() -> tuple[int, int]:
    """(summed VmRSS in KiB, number of processes) of this process's cryptsetup children."""
    total = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in _child_status(entry):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    count += 1
        except OSError:
            continue  # the process ended while we looked
    return total, count


class PeakSampler(Generic[T]):
    """Calls `sample()` every `interval` seconds in a thread of its own while its `with`
    block runs, and keeps the largest value it returned (`peak`)."""

    def __init__(self, sample: Callable[[], T], interval: float = 0.01) -> None:
        self.sample, self.interval = sample, interval
        self.peak: T = sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())  # type: ignore[type-var]
            self._stop.wait(self.interval)
