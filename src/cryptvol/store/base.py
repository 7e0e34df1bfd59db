"""The state store: an ordered key-value map with revisions and atomic compare-and-swap.

Two implementations hold the same contract: SQLite (the embedded default) and etcd (a
cluster). Everything cryptvol persists (volume records, wrapped DEKs, KEK sets, rotation
stage) is a value under a key, changed only by `txn`, so concurrent writers on one record
can never interleave: one wins, the other sees its compare fail and retries or gives up.

Revisions: every key carries the store revision of its last write; 0 means "absent".
Keys put with `put_lease` live only as long as their time-to-live, unless put again: that is
how replicas say they are alive; `end_lease` takes one away at once (a replica that stops).

A delete or an overwrite alone leaves the old value in the store's history (etcd's earlier
revisions, SQLite's WAL and free pages); `forget_history` makes it unreadable, and the keys
layer calls it after shredding a DEK or retiring a KEK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class Compare:
    """Holds when `key`'s current revision equals `revision` (0: the key is absent)."""

    key: str
    revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


class Store(Protocol):
    def get(self, key: str) -> Entry | None:
        """The entry at `key`, or None."""
        ...

    def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0, max_revision: int = 0
    ) -> list[Entry]:
        """Entries whose key starts with `prefix`, in key order, after `start_after`;
        at most `limit` of them (0: all); with `max_revision`, only those last written at or
        before that revision (0: no bound)."""
        ...

    def count(self, prefix: str) -> int:
        """How many keys start with `prefix`."""
        ...

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        """Apply every op atomically if every compare holds; return whether it did."""
        ...

    def txn_at(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        """`txn`, returning the revision its writes carry (what a later compare on them
        compares with; with no ops, the store's current one), or None when a compare
        failed."""
        ...

    def put_lease(self, key: str, value: bytes, ttl: float) -> None:
        """Put `value` at `key`; it disappears `ttl` seconds later unless put again."""
        ...

    def end_lease(self, key: str) -> None:
        """End the lease of a key put with `put_lease` now: the key is gone, as if its
        time-to-live had run out (idempotent)."""
        ...

    def forget_history(self) -> None:
        """Make every value that a write has deleted or overwritten unreadable from the
        store: no earlier revision of any key can be read back, by the API or (as far as
        the store can see to it) from its files."""
        ...

    def close(self) -> None: ...


def txn_then_forget(store: Store, compares: Sequence[Compare], ops: Sequence[Put | Delete]
                    ) -> bool:
    """`store.txn(compares, ops)`, then `store.forget_history()`: a shred's last write. A
    store that can do both in one round (SQLite: the checkpoint after the group commit that
    holds the transaction) does; the others take two."""
    combined = getattr(store, "txn_then_forget", None)
    if combined is not None:
        return bool(combined(compares, ops))
    applied = store.txn(compares, ops)
    store.forget_history()
    return applied


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key that starts with `prefix` ('' for no bound).

    Keys compare as their UTF-8 bytes (as in etcd and in SQLite's default collation), so the
    bound is the prefix with its last byte incremented, dropping trailing 0xff bytes.
    """
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return ""
    raw[-1] += 1
    return raw.decode(errors="surrogateescape")
