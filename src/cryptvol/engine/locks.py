"""Per-volume operation locks: a second operation on a busy volume is Aborted at once.

Kubelet and the CSI sidecars retry, so waiting buys nothing and risks piling up threads;
answering Aborted tells them to come back. Two operations never interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cryptvol.errors import Aborted


class OperationLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._busy: dict[str, str] = {}

    @contextmanager
    def hold(self, key: str, operation: str) -> Iterator[None]:
        with self._guard:
            current = self._busy.get(key)
            if current is not None:
                raise Aborted(
                    f"{current} is in progress for {key}; retry once it has finished"
                )
            self._busy[key] = operation
        try:
            yield
        finally:
            with self._guard:
                self._busy.pop(key, None)

    def busy(self) -> dict[str, str]:
        with self._guard:
            return dict(self._busy)
