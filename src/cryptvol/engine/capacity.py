"""What each pool has promised, and what it may still promise.

A volume's backing size is promised when its record is written, whether or not its blocks
are allocated yet: sparse files, thin LVs and zvols fill later, when the workload writes.
A pool promises at most its size times `--overcommit-ratio` (1.0: never more than it can
hold), so with the default no volume can hit a full pool. Creates and growths reserve
their bytes under one lock per pool, so two of them cannot both take the last room, and
write their records outside it, so concurrent creates still share one commit (the store's
group commit). A reservation counts until its caller is done, even once its record is
written: near the limit that errs towards refusing, never towards over-promising.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cryptvol.errors import InvalidArgument, ResourceExhausted
from cryptvol.pools.base import Pool
from cryptvol.state.repository import VolumeRepository


class CapacityLedger:
    def __init__(self, volumes: VolumeRepository, node_id: str, overcommit: float = 1.0
                 ) -> None:
        if not overcommit > 0:
            raise InvalidArgument(f"the over-commit ratio must be above 0, not {overcommit}")
        self.volumes = volumes
        self.node_id = node_id
        self.overcommit = overcommit
        self._guard = threading.Lock()
        self._pool_locks: dict[str, threading.Lock] = {}
        self._reserved: dict[str, int] = {}
        # Per record key: (revision, its pool if this node's else None, its backing bytes).
        self._scanned: dict[str, tuple[int, str | None, int]] = {}

    def promised(self, pool: Pool) -> int:
        """The backing bytes of every volume this node has recorded in `pool`."""
        # Read from the store each time (every writer's records count), but a record is
        # decoded only when its revision changed since the last scan: decoding every record
        # on every create made a create cost milliseconds per thousand volumes.
        seen: dict[str, tuple[int, str | None, int]] = {}
        total = 0
        for entry in self.volumes.all_entries():
            known = self._scanned.get(entry.key)
            if known is None or known[0] != entry.revision:
                record = self.volumes.decode(entry)
                mine = record.pool if record.node_id == self.node_id else None
                known = (entry.revision, mine, record.backing_bytes)
            seen[entry.key] = known
            if known[1] == pool.name:
                total += known[2]
        self._scanned = seen  # what is gone from the store goes from here too
        return total

    def limit(self, pool: Pool) -> int:
        return int(pool.provisioner.space().total_bytes * self.overcommit)

    def available(self, pool: Pool) -> int:
        """Backing bytes `pool` may still promise."""
        with self._guard:
            reserved = self._reserved.get(pool.name, 0)
        return max(0, self.limit(pool) - self.promised(pool) - reserved)

    @contextmanager
    def promise(self, pool: Pool, more_bytes: int, what: str) -> Iterator[None]:
        """Reserve `more_bytes` more of `pool` while the caller records them;
        ResourceExhausted when they do not fit."""
        more_bytes = max(0, more_bytes)
        with self._lock_of(pool.name):
            if more_bytes:
                with self._guard:
                    reserved = self._reserved.get(pool.name, 0)
                promised = self.promised(pool) + reserved
                # A pool's size is at least what is free in it now: a promise that fits in
                # the free bytes x ratio fits in the limit, so the size (for a loop pool, a
                # stat of every volume's file) is only counted near the limit.
                if promised + more_bytes > int(pool.provisioner.free_bytes() * self.overcommit):
                    limit = self.limit(pool)
                    if promised + more_bytes > limit:
                        raise ResourceExhausted(
                            f"pool {pool.name} has promised {promised} of the {limit} bytes "
                            f"it may promise (its size x over-commit ratio "
                            f"{self.overcommit:g}); {what} needs {more_bytes} more"
                        )
                with self._guard:
                    # Read again: a caller elsewhere may have finished meanwhile.
                    self._reserved[pool.name] = self._reserved.get(pool.name, 0) + more_bytes
        try:
            yield
        finally:
            if more_bytes:
                with self._guard:
                    self._reserved[pool.name] -= more_bytes

    def _lock_of(self, pool_name: str) -> threading.Lock:
        with self._guard:
            return self._pool_locks.setdefault(pool_name, threading.Lock())
