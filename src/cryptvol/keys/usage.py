"""When each KEK was last used by a KMS plugin: kept per plugin replica, read by retirement.

Data that kube-apiserver encrypted through the KMS plugin lives in the apiserver's own store,
out of reach of `cryptvol keys reencrypt`. What cryptvol can see is the plugin being asked to
use a KEK: every plugin replica notes, in memory, the last time it encrypted or decrypted with
each KEK, and its replica loop writes that to `USAGE_PREFIX + <replica name>` when a time has
moved by more than `resolution` seconds (never on the request path). The records outlive the
replica on purpose: a plugin that decrypted with a KEK an hour ago and restarted since still
counts. Retirement reads them all (`recently_used`) and refuses a KEK used within the grace.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from cryptvol.store.base import Put, Store

USAGE_PREFIX = "/cryptvol/keys/usage/"
DEFAULT_RETIRE_GRACE = 24 * 3600.0
DEFAULT_RESOLUTION = 10.0


@dataclass(frozen=True)
class LastUse:
    kek_id: str
    time: float
    replica: str


class KekUsage:
    """One plugin replica's last use of each KEK. `note` is cheap and thread-safe."""

    def __init__(self, store: Store, replica: str, *, resolution: float = DEFAULT_RESOLUTION):
        self.store = store
        self.replica = replica
        self.resolution = resolution
        self._seen: dict[str, float] = {}
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, kek_id: str) -> None:
        # One dict store; the GIL makes it atomic, so the request path takes no lock.
        self._seen[kek_id] = time.time()

    def snapshot(self) -> dict[str, float]:
        return dict(self._seen)

    def flush(self, *, force: bool = False) -> bool:
        """Write this replica's record if a last use moved by more than the resolution (or
        `force`); return whether it wrote. Raises what the store raises."""
        with self._lock:
            seen = self.snapshot()
            due = force and seen != self._written
            due = due or any(
                t - self._written.get(k, 0.0) > self.resolution for k, t in seen.items()
            )
            if not due:
                return False
            record = _read_one(self.store, self.replica)
            for kek_id, when in seen.items():
                record[kek_id] = max(record.get(kek_id, 0.0), when)
            value = json.dumps({"v": 1, "keks": record}, sort_keys=True).encode()
            self.store.txn([], [Put(USAGE_PREFIX + self.replica, value)])
            self._written = seen
            return True


def _parse(raw: bytes) -> dict[str, float]:
    try:
        doc = json.loads(raw)
        return {str(k): float(v) for k, v in doc.get("keks", {}).items()}
    except (ValueError, TypeError, AttributeError):
        return {}  # an unreadable record says nothing; it is rewritten at the next flush


def _read_one(store: Store, replica: str) -> dict[str, float]:
    entry = store.get(USAGE_PREFIX + replica)
    return _parse(entry.value) if entry else {}


def read_usage(store: Store) -> dict[str, LastUse]:
    """The latest use of each KEK by any plugin replica."""
    latest: dict[str, LastUse] = {}
    for entry in store.range(USAGE_PREFIX):
        replica = entry.key[len(USAGE_PREFIX) :]
        for kek_id, when in _parse(entry.value).items():
            if kek_id not in latest or when > latest[kek_id].time:
                latest[kek_id] = LastUse(kek_id, when, replica)
    return latest


def recently_used(
    store: Store, kek_ids: list[str], grace: float, now: float | None = None
) -> list[LastUse]:
    """The KEKs among `kek_ids` some plugin used within the last `grace` seconds."""
    now = time.time() if now is None else now
    usage = read_usage(store)
    return [usage[k] for k in kek_ids if k in usage and now - usage[k].time < grace]
