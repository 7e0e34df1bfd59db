"""Volume records in the state store, changed only by compare-and-swap.

Layout: `/cryptvol/volumes/<id>` holds the record as JSON, `/cryptvol/names/<name>` the id a
CreateVolume name maps to. Both are written in one transaction, so a name never points at a
missing record, and two CreateVolume calls with one name cannot both win.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from cryptvol.errors import Aborted, NotFound
from cryptvol.store.base import Compare, Delete, Entry, Put, Store

VOLUMES = "/cryptvol/volumes/"
NAMES = "/cryptvol/names/"
VolumeState = Literal["creating", "ready", "deleting"]


class LuksRecord(BaseModel):
    """The LUKS parameters a volume was planned with, and why."""

    format: dict[str, object]
    open: dict[str, object]
    reasons: list[str]
    unlock_memory_kib: int = 0
    pbkdf_asked: str = "auto"
    fell_back: bool = False


class VolumeRecord(BaseModel):
    id: str
    name: str
    capacity_bytes: int
    backing_bytes: int
    parameters: dict[str, str]
    fs_type: str
    key_source: Literal["managed", "secret"]
    secret_key: str = "passphrase"
    backend: str
    node_id: str
    luks: LuksRecord
    state: VolumeState = "creating"
    created_at: float = Field(default_factory=time.time)
    # Set when the node has grown the mapping and filesystem to `capacity_bytes`.
    node_capacity_bytes: int = 0


class VolumeRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, volume_id: str) -> VolumeRecord | None:
        entry = self.store.get(VOLUMES + volume_id)
        return _decode(entry) if entry else None

    def require(self, volume_id: str) -> VolumeRecord:
        record = self.get(volume_id)
        if record is None:
            raise NotFound(f"volume {volume_id} does not exist")
        return record

    def id_for_name(self, name: str) -> str | None:
        entry = self.store.get(NAMES + name)
        return entry.value.decode() if entry else None

    def insert(self, record: VolumeRecord) -> bool:
        """Add a new record and its name; False when the name or id is already taken."""
        return self.store.txn(
            [Compare(NAMES + record.name, 0), Compare(VOLUMES + record.id, 0)],
            [Put(NAMES + record.name, record.id.encode()),
             Put(VOLUMES + record.id, record.model_dump_json().encode())],
        )

    def update(
        self, volume_id: str, change: Callable[[VolumeRecord], VolumeRecord]
    ) -> VolumeRecord:
        """Apply `change` to the stored record with compare-and-swap, retrying a lost race."""
        for _ in range(20):
            entry = self.store.get(VOLUMES + volume_id)
            if entry is None:
                raise NotFound(f"volume {volume_id} does not exist")
            updated = change(_decode(entry))
            if self.store.txn([Compare(entry.key, entry.revision)],
                              [Put(entry.key, updated.model_dump_json().encode())]):
                return updated
        raise Aborted(f"volume {volume_id} is being changed concurrently; retry")

    def remove(self, record: VolumeRecord) -> None:
        ops: list[Put | Delete] = [Delete(VOLUMES + record.id)]
        if self.id_for_name(record.name) == record.id:
            ops.append(Delete(NAMES + record.name))
        self.store.txn([], ops)

    def page(self, start_after: str, limit: int) -> list[VolumeRecord]:
        entries = self.store.range(VOLUMES, start_after=VOLUMES + start_after if start_after
                                   else "", limit=limit)
        return [_decode(e) for e in entries]


def _decode(entry: Entry) -> VolumeRecord:
    return VolumeRecord.model_validate_json(entry.value)
