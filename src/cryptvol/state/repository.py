"""Records in the state store, changed only by compare-and-swap.

Each record kind lives under its `RecordLayout`: the record as JSON by id, and the id its
create name maps to. A record and its name are written in one transaction, so a name never
points at a missing record and two creates with one name cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from cryptvol.errors import Aborted, NotFound
from cryptvol.state.layout import SNAPSHOTS, VOLUMES, RecordLayout
from cryptvol.state.records import Record, SnapshotRecord, VolumeRecord, encode
from cryptvol.store.base import Compare, Delete, Entry, Put, Store, txn_then_forget

_CAS_ATTEMPTS = 20


R = TypeVar("R", bound=Record)


class Repository(Generic[R]):
    """Records of one kind (`model`) under one layout."""

    def __init__(self, store: Store, layout: RecordLayout, model: type[R], kind: str) -> None:
        self.store = store
        self.layout = layout
        self.model = model
        self.kind = kind

    def _decode(self, raw: bytes) -> R:
        return self.model.model_validate_json(raw)

    def get(self, record_id: str) -> R | None:
        found = self.get_with_revision(record_id)
        return found[0] if found else None

    def get_with_revision(self, record_id: str) -> tuple[R, int] | None:
        """The record and the store revision it was last written at (what `update` takes
        as `current`), or None."""
        entry = self.store.get(self.layout.record_key(record_id))
        return (self._decode(entry.value), entry.revision) if entry else None

    def require(self, record_id: str) -> R:
        record = self.get(record_id)
        if record is None:
            raise NotFound(f"{self.kind} {record_id} does not exist")
        return record

    def id_for_name(self, name: str) -> str | None:
        entry = self.store.get(self.layout.name_key(name))
        return entry.value.decode() if entry else None

    def insert(
        self,
        record: R,
        *,
        with_compares: Sequence[Compare] = (),
        with_ops: Sequence[Put | Delete] = (),
    ) -> int | None:
        """Add a new record and its name, in one transaction with `with_ops` (another
        layer's writes that belong with it, under their own `with_compares`); return the
        record's revision (what `update` takes with it as `current`), or None when the name
        or id is already taken or one of `with_compares` failed."""
        name_key, record_key = self.layout.name_key(record.name), self.layout.record_key(record.id)
        return self.store.txn_at(
            [Compare(name_key, 0), Compare(record_key, 0), *with_compares],
            [Put(name_key, record.id.encode()), Put(record_key, encode(record)), *with_ops],
        )

    def update(
        self, record_id: str, change: Callable[[R], R], *, with_ops: Sequence[Put | Delete] = (),
        current: tuple[R, int] | None = None,
    ) -> R:
        """Apply `change` to the stored record with compare-and-swap, retrying a lost race;
        `with_ops` (another layer's unconditional writes) commit with it. `current`: the
        record and revision the caller has just read (`get_with_revision`), tried first
        instead of reading and decoding it again; a stale one only costs a retry."""
        key = self.layout.record_key(record_id)
        for _ in range(_CAS_ATTEMPTS):
            if current is None:
                current = self.get_with_revision(record_id)
                if current is None:
                    raise NotFound(f"{self.kind} {record_id} does not exist")
            record, revision = current
            updated = change(record)
            if self.store.txn([Compare(key, revision)], [Put(key, encode(updated)), *with_ops]):
                return updated
            current = None
        raise Aborted(f"{self.kind} {record_id} is being changed concurrently; retry")

    def remove(self, record: R, *, forget_history: bool = False, owns_name: bool = False
               ) -> None:
        """Delete the record and its name; with `forget_history`, the store then forgets
        every value deleted so far (the last step of a shred) before this returns. The name
        goes only if it maps to this record: read first, unless the caller knows so
        (`owns_name`: the record's id derives from its name, so no other record has it)."""
        ops: list[Put | Delete] = [Delete(self.layout.record_key(record.id))]
        if owns_name or self.id_for_name(record.name) == record.id:
            ops.append(Delete(self.layout.name_key(record.name)))
        if forget_history:
            txn_then_forget(self.store, [], ops)
        else:
            self.store.txn([], ops)

    def page(self, start_after: str, limit: int) -> list[R]:
        prefix = self.layout.records
        entries = self.store.range(prefix, start_after=prefix + start_after if start_after
                                   else "", limit=limit)
        return [self._decode(e.value) for e in entries]

    def all(self) -> list[R]:
        return self.page("", 0)

    def all_entries(self) -> list[Entry]:
        """Every record as stored, undecoded: for a caller that keeps what it derives from
        each (by key and revision) instead of decoding every record on every scan."""
        return self.store.range(self.layout.records)

    def decode(self, entry: Entry) -> R:
        return self._decode(entry.value)

    def page_where(self, start_after: str, limit: int, keep: Callable[[R], bool]
                   ) -> tuple[list[R], str]:
        """Up to `limit` records (0: all) after id `start_after` that `keep` accepts, in id
        order, and the token of the next page: the last id returned, or "" when nothing
        accepted is left. A token is a position, not a record, so a page still follows
        when the record it names was deleted in between."""
        chunk = max(limit + 1, 64)
        found: list[R] = []
        cursor = start_after
        while True:
            batch = self.page(cursor, chunk)
            found.extend(r for r in batch if keep(r))
            if limit and len(found) > limit:
                return found[:limit], found[limit - 1].id
            if len(batch) < chunk:
                return found, ""
            cursor = batch[-1].id


class VolumeRepository(Repository[VolumeRecord]):
    def __init__(self, store: Store) -> None:
        super().__init__(store, VOLUMES, VolumeRecord, "volume")


class SnapshotRepository(Repository[SnapshotRecord]):
    def __init__(self, store: Store) -> None:
        super().__init__(store, SNAPSHOTS, SnapshotRecord, "snapshot")

