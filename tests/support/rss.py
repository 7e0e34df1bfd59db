"""The summed resident memory of this process's cryptsetup children, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path


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
