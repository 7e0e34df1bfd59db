"""What the three halves of a volume say about each other: its record (state store), its
backing volume (pool) and its wrapped data key (key store). Each half without the others is
an orphan: a backing volume without a record cannot be unlocked by anyone, a record without
its backing volume or key describes a volume whose data is gone or unreadable, and a key
without a record is never shredded. `cryptvol state check` lists them; the driver's start
refuses a pool holding volumes that the store has no record of.

A snapshot has the same halves: its record, its storage (which pools keep apart from their
volumes, so it is never taken for a volume without a record) and its own copy of its
volume's key under its own id. A snapshot's key is owned by its record, whether or not the
volume it was taken of still lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptvol.keys.manager import stored_dek_ids
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state.identity import adopted_orphans
from cryptvol.state.records import SnapshotRecord, VolumeRecord
from cryptvol.state.repository import SnapshotRepository, VolumeRepository


@dataclass(frozen=True)
class Orphans:
    # pool name: ids of backing volumes there that no record names
    unrecorded: dict[str, list[str]] = field(default_factory=dict)
    # of those, the ones an operator accepted with `serve --adopt`
    adopted: set[str] = field(default_factory=set)
    # records of this node whose backing volume is missing from their pool
    unbacked: list[VolumeRecord] = field(default_factory=list)
    # records of this node in a pool this driver does not configure (not checked further)
    unconfigured: list[VolumeRecord] = field(default_factory=list)
    # records of managed-key volumes and snapshots that have no wrapped data key
    keyless: list[VolumeRecord | SnapshotRecord] = field(default_factory=list)
    # volume and snapshot ids that have a wrapped data key and no record
    unowned_keys: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.unrecorded, self.unbacked, self.unconfigured, self.keyless,
                    self.unowned_keys))


def unrecorded_volumes(pools: PoolRegistry, recorded: Iterable[str]) -> dict[str, list[str]]:
    """Backing volumes, by pool, that no record names."""
    known = set(recorded)
    found = {}
    for pool in pools.all():
        ids = [v for v in pool.provisioner.volume_ids() if v not in known]
        if ids:
            found[pool.name] = ids
    return found


def find_orphans(volumes: VolumeRepository, snapshots: SnapshotRepository,
                 pools: PoolRegistry, node_id: str) -> Orphans:
    records = volumes.all()
    taken = snapshots.all()
    keys = set(stored_dek_ids(volumes.store))
    ours = [r for r in records if r.node_id == node_id]
    configured = set(pools.names)
    unbacked = []
    for record in ours:
        if record.pool in configured and record.state == "ready" and \
                pools.get(record.pool).provisioner.size(record.id) is None:
            unbacked.append(record)
    # A create cut short writes its key last and a delete shreds it first: only a finished
    # volume or snapshot must have one.
    halves: list[VolumeRecord | SnapshotRecord] = [*records, *taken]
    keyless = [r for r in halves
               if r.key_source == "managed" and r.state == "ready" and r.id not in keys]
    recorded = {r.id for r in records} | {s.id for s in taken}
    return Orphans(
        unrecorded=unrecorded_volumes(pools, {r.id for r in records}),
        adopted=adopted_orphans(volumes.store),
        unbacked=unbacked,
        unconfigured=[r for r in ours if r.pool not in configured],
        keyless=keyless,
        unowned_keys=sorted(keys - recorded),
    )
