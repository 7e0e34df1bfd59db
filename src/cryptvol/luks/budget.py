"""A node-wide memory budget for unlocks, so staging many volumes at once cannot exhaust RAM.

An argon2 unlock holds its whole PBKDF memory (cryptsetup's default: up to 1 GiB) for the
length of the unlock. After a reboot a node may stage dozens of volumes at once; each
NodeStage reserves what its unlock costs and waits, first come first served, until that
much is free. A wait is bounded: then `ResourceExhausted`, which the CO retries later.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cryptvol.errors import ResourceExhausted

if TYPE_CHECKING:
    from cryptvol.luks.probe import HostProbe

# What a cryptsetup process holds besides its PBKDF memory (binary, libraries, LUKS2
# metadata); measured peak RSS of a pbkdf2 unlock is about 6 MiB, rounded up.
CRYPTSETUP_PROCESS_KIB = 8 * 1024
# Share of the usable memory unlocks may take together by default, and its floor.
DEFAULT_BUDGET_FRACTION = 0.25
MIN_DEFAULT_BUDGET_KIB = 64 * 1024
FALLBACK_BUDGET_KIB = 1024 * 1024


def default_budget_kib(host: HostProbe | None) -> int:
    """A quarter of the memory cryptsetup may use on this node (node RAM or the driver's
    cgroup limit, whichever is smaller), at least 64 MiB."""
    usable = host.usable_memory_kib if host is not None else 0
    if not usable:
        return FALLBACK_BUDGET_KIB
    return max(MIN_DEFAULT_BUDGET_KIB, int(usable * DEFAULT_BUDGET_FRACTION))


class MemoryBudget:
    """Memory shared by concurrent unlocks, handed out in arrival order."""

    def __init__(self, total_kib: int) -> None:
        if total_kib <= 0:
            raise ValueError("a memory budget must be positive")
        self.total_kib = total_kib
        self._in_use = 0
        self._holders = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @classmethod
    def for_host(cls, host: HostProbe | None) -> MemoryBudget:
        return cls(default_budget_kib(host))

    @property
    def in_use_kib(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextmanager
    def reserve(self, kib: int, timeout: float, what: str = "unlock") -> Iterator[None]:
        """Hold `kib` of the budget for the body of the `with`. Waits behind earlier
        requests; raises ResourceExhausted after `timeout` seconds, or at once when `kib`
        is more than the whole budget."""
        if kib < 0:
            raise ValueError("cannot reserve a negative amount")
        if kib > self.total_kib:
            raise ResourceExhausted(
                f"{what} needs {_mib(kib)} of memory, more than the node's whole unlock "
                f"budget of {_mib(self.total_kib)}; raise the budget or lower the volume's "
                "pbkdfMemory"
            )
        ticket = object()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self._in_use + kib > self.total_kib:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResourceExhausted(
                            f"{what} waited {timeout:g} s for {_mib(kib)} of the node's "
                            f"unlock memory budget ({_mib(self._in_use)} of "
                            f"{_mib(self.total_kib)} held by {self._holders} unlocks, "
                            f"{len(self._queue) - 1} others waiting); it will be retried"
                        )
                    self._cond.wait(left)
            finally:
                self._queue.remove(ticket)
                # The next in line may now be at the head of the queue.
                self._cond.notify_all()
            self._in_use += kib
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= kib
                self._holders -= 1
                self._cond.notify_all()


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB" if kib >= 1024 else f"{kib} KiB"
