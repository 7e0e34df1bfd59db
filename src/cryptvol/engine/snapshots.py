"""The controller side of a snapshot's life: create, delete, list, get.

A snapshot is a point-in-time copy of a volume's backing bytes (LUKS2 header included) in
the volume's pool, and a record that keeps what a restore needs from the volume, so it
outlives the volume. A managed volume's snapshot keeps its own copy of the volume's DEK as
it was when taken (wrapped for the snapshot by the key manager): a later key change on the
volume, or its deletion, never locks the snapshot out.

Every step is recorded before it is taken and idempotent, so a CreateSnapshot or
DeleteSnapshot cut short by a crash finishes when the orchestrator retries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptvol.engine import copies
from cryptvol.engine.ids import is_snapshot_id, is_volume_id, snapshot_id_for
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.parameters import parse_snapshot_parameters
from cryptvol.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from cryptvol.keys.manager import KeyManager
from cryptvol.pools.base import Pool
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state.records import SnapshotRecord, VolumeRecord
from cryptvol.state.repository import SnapshotRepository, VolumeRepository
from cryptvol.system import failpoints


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    source_volume_id: str
    size_bytes: int
    created_at: float
    ready: bool


class SnapshotEngine:
    def __init__(self, volumes: VolumeRepository, snapshots: SnapshotRepository,
                 keys: KeyManager, pools: PoolRegistry, node_id: str,
                 locks: OperationLocks) -> None:
        self.volumes = volumes
        self.snapshots = snapshots
        self.keys = keys
        self.pools = pools
        self.node_id = node_id
        self.locks = locks

    # --- CreateSnapshot -----------------------------------------------------------------
    def create_snapshot(self, source_volume_id: str, name: str,
                        parameters: Mapping[str, str]) -> SnapshotInfo:
        parse_snapshot_parameters(parameters)
        snapshot_id = snapshot_id_for(name)
        with self.locks.hold(snapshot_id, "CreateSnapshot"):
            existing = self.snapshots.get(snapshot_id)
            if existing is not None:
                if existing.name != name or existing.source_volume_id != source_volume_id:
                    raise AlreadyExists(
                        f"snapshot {name!r} exists of volume {existing.source_volume_id}, "
                        "not of the volume asked; use a new name"
                    )
                if existing.state == "deleting":
                    raise AlreadyExists(
                        f"snapshot {name!r} is being deleted; retry once DeleteSnapshot finished"
                    )
                if existing.state == "ready":
                    return _info(existing)
            # The volume's lock: no stage, expansion or deletion of it meanwhile.
            with self.locks.hold(source_volume_id, "CreateSnapshot"):
                if existing is None:
                    existing = self._new(snapshot_id, name, source_volume_id)
                return _info(self._finish(existing))

    def _new(self, snapshot_id: str, name: str, source_volume_id: str) -> SnapshotRecord:
        """Record a new snapshot once every check that can refuse it has passed."""
        volume = self._source(source_volume_id)
        pool = self._pool(volume.id, volume.pool)
        copies.check_can_copy(pool, pool.capabilities.snapshot, volume.id)
        copies.check_settled(volume, self.keys)
        record = SnapshotRecord(
            id=snapshot_id,
            name=name,
            source_volume_id=volume.id,
            pool=volume.pool,
            size_bytes=volume.capacity_bytes,
            backing_bytes=volume.backing_bytes,
            fs_type=volume.fs_type,
            key_source=volume.key_source,
            secret_key=volume.secret_key,
            luks=volume.luks,
            node_id=self.node_id,
        )
        if not self.snapshots.insert(record):
            raise Aborted(f"snapshot {name!r} was created concurrently; retry")
        return record

    def _finish(self, record: SnapshotRecord) -> SnapshotRecord:
        failpoints.reached("snapshot:after-record")
        source = self.volumes.get(record.source_volume_id)
        if source is None or source.state != "ready":
            # Deleted while a crash left this snapshot unfinished: nothing to take it of.
            self._delete(record)
            raise NotFound(f"volume {record.source_volume_id} does not exist")
        if record.key_source == "managed":
            self.keys.copy_dek(record.source_volume_id, record.id)
        failpoints.reached("snapshot:after-key")
        size = self._pool(record.id, record.pool).provisioner.snapshot(
            record.source_volume_id, record.id)
        failpoints.reached("snapshot:after-backing")
        return self.snapshots.update(record.id, lambda r: r.model_copy(
            update={"state": "ready", "backing_bytes": size}))

    def _source(self, volume_id: str) -> VolumeRecord:
        if not volume_id:
            raise InvalidArgument("source_volume_id is required")
        volume = self.volumes.get(volume_id) if is_volume_id(volume_id) else None
        if volume is None or volume.state != "ready":
            raise NotFound(f"volume {volume_id} does not exist")
        return volume

    # --- DeleteSnapshot -----------------------------------------------------------------
    def delete_snapshot(self, snapshot_id: str) -> None:
        if not is_snapshot_id(snapshot_id):
            return  # never ours, so already absent: DeleteSnapshot succeeds
        with self.locks.hold(snapshot_id, "DeleteSnapshot"):
            record = self.snapshots.get(snapshot_id)
            if record is not None:
                self._delete(record)

    def _delete(self, record: SnapshotRecord) -> None:
        """Mark, shred the snapshot's key copy, free its storage, drop the record: each step
        idempotent, the record last, so a retry after a crash finds what is left."""
        if record.state != "deleting":
            record = self.snapshots.update(record.id, lambda r: r.model_copy(
                update={"state": "deleting"}))
        failpoints.reached("snapshot-delete:after-mark")
        self.keys.delete_dek(record.id)
        failpoints.reached("snapshot-delete:after-key")
        self._pool(record.id, record.pool).provisioner.delete_snapshot(
            record.source_volume_id, record.id)
        failpoints.reached("snapshot-delete:after-backing")
        self.snapshots.remove(record)

    # --- ListSnapshots, GetSnapshot -------------------------------------------------------
    def list_snapshots(self, max_entries: int, starting_token: str, source_volume_id: str,
                       snapshot_id: str) -> tuple[list[SnapshotInfo], str]:
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        if starting_token and not is_snapshot_id(starting_token):
            raise Aborted(f"starting_token {starting_token!r} is not one this driver issued")

        def wanted(r: SnapshotRecord) -> bool:
            return r.state == "ready" and (not source_volume_id
                                           or r.source_volume_id == source_volume_id)

        if snapshot_id:
            # Listing one snapshot by id: no pages, and an unknown id is an empty list.
            one = self.snapshots.get(snapshot_id) if is_snapshot_id(snapshot_id) else None
            return ([_info(one)] if one is not None and wanted(one) else []), ""
        page, next_token = self.snapshots.page_where(starting_token, max_entries, wanted)
        return [_info(r) for r in page], next_token

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        record = self.snapshots.get(snapshot_id) if is_snapshot_id(snapshot_id) else None
        if record is None or record.state == "deleting":
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return _info(record)

    def _pool(self, owner: str, pool_name: str) -> Pool:
        return self.pools.of_volume(owner, pool_name)


def _info(record: SnapshotRecord) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=record.id,
        source_volume_id=record.source_volume_id,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        ready=record.state == "ready",
    )
