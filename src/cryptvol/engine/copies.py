"""Copies: what a snapshot, or a volume made from a snapshot or volume, is taken from, and
whether that can work, decided before anything is written.

A copy is the same ciphertext as its source, LUKS2 header included, so it keeps what the
header fixes (cipher, key size, sector size, filesystem, how it is unlocked) and lives in
the source's pool, which makes it by the method the pool declares. The engine decides
from those declarations, never from a pool's kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptvol.engine.ids import is_snapshot_id, is_volume_id
from cryptvol.errors import FailedPrecondition, InvalidArgument, NotFound
from cryptvol.keys.manager import KeyManager
from cryptvol.luks.policy import LuksPlan
from cryptvol.pools.base import CopySource, Pool
from cryptvol.state.records import ContentSource, KeySource, LuksRecord, VolumeRecord
from cryptvol.state.repository import SnapshotRepository, VolumeRepository

# What a copy keeps from its source's LUKS2 header, as the plan's format options name it.
_HEADER_FIXED = (("cipher", "cipher"), ("key_size", "keySize"), ("sector_size", "sectorSize"))


@dataclass(frozen=True)
class Origin:
    """A copy's source, resolved: where its bytes are and what they are."""

    source: ContentSource
    bytes_from: CopySource
    # Whose DEK a managed copy starts with: the snapshot's own copy, or the volume's.
    key_id: str
    pool: str
    size_bytes: int
    fs_type: str
    key_source: KeySource
    secret_key: str
    luks: LuksRecord

    @property
    def what(self) -> str:
        return f"{self.source.kind} {self.source.id}"


def resolve(source: ContentSource, volumes: VolumeRepository,
            snapshots: SnapshotRepository, keys: KeyManager) -> Origin:
    """The ready snapshot or volume `source` names; NotFound when there is none."""
    if source.kind == "snapshot":
        snap = snapshots.get(source.id) if is_snapshot_id(source.id) else None
        if snap is None or snap.state != "ready":
            raise NotFound(f"snapshot {source.id} does not exist")
        return Origin(source, CopySource(snap.source_volume_id, snap.id), snap.id, snap.pool,
                      snap.size_bytes, snap.fs_type, snap.key_source, snap.secret_key,
                      snap.luks)
    volume = volumes.get(source.id) if is_volume_id(source.id) else None
    if volume is None or volume.state != "ready":
        raise NotFound(f"volume {source.id} does not exist")
    check_settled(volume, keys)
    return Origin(source, CopySource(volume.id), volume.id, volume.pool,
                  volume.capacity_bytes, volume.fs_type, volume.key_source,
                  volume.secret_key, volume.luks)


def check_settled(volume: VolumeRecord, keys: KeyManager) -> None:
    """Refuse to copy a volume whose own first stage has not settled its keys: cut short
    between adding its own DEK and recording it, it has two candidate keys; while it is
    reencrypted, its header is half one volume key, half the other."""
    if volume.key_source == "managed" and keys.pending_dek(volume.id) is not None:
        raise FailedPrecondition(
            f"volume {volume.id} is replacing its data key (its first stage was interrupted); "
            "stage it once more, then copy it"
        )
    if volume.reencrypt == "pending" and volume.reencrypt_from:
        raise FailedPrecondition(
            f"volume {volume.id} is being reencrypted to its own volume key (cloneReencrypt; "
            "its condition shows how far); snapshot or copy it once that has finished"
        )


def check_can_copy(pool: Pool, method: str, live_volume: str | None) -> None:
    """Refuse a copy the pool cannot make, or cannot make consistently now."""
    if not method:
        raise InvalidArgument(
            f"pool {pool.name!r} ({pool.kind}) cannot take snapshots or copies; use a pool "
            "that can (loop, lvmthin, zfs)"
        )
    if method == "copy" and live_volume and pool.provisioner.in_use(live_volume):
        raise FailedPrecondition(
            f"volume {live_volume} is staged, and pool {pool.name!r} copies a volume by "
            "copying its bytes, which would mix moments while it is written; stop its pods "
            "(unstage it) first, or use a pool with atomic snapshots (lvmthin, zfs, or a loop "
            "pool on a filesystem with reflinks)"
        )


def check_same_pool(origin: Origin, target: Pool, source_pool: Pool) -> None:
    if target.name == source_pool.name:
        return
    if target.kind != source_pool.kind:
        raise InvalidArgument(
            f"{origin.what} lives in pool {source_pool.name!r} ({source_pool.kind}); a copy "
            f"cannot go to pool {target.name!r} ({target.kind}): a copy is made inside its "
            f"source's pool. Use a StorageClass with pool: {source_pool.name} (or none)"
        )
    raise InvalidArgument(
        f"{origin.what} lives in pool {source_pool.name!r}; a copy is made inside its "
        f"source's pool, not in pool {target.name!r}. Use a StorageClass with pool: "
        f"{source_pool.name} (or none)"
    )


def check_compatible(origin: Origin, key_source: KeySource, secret_key: str,
                     parameters: Mapping[str, str], asked_fs: str | None) -> None:
    """The new volume's parameters must not ask for what the copied header fixes."""
    if key_source != origin.key_source:
        raise InvalidArgument(
            f"{origin.what} is unlocked by {_key_words(origin.key_source)}; a copy keeps "
            f"that, so it needs keySource: {origin.key_source}"
        )
    if key_source == "secret" and secret_key != origin.secret_key:
        raise InvalidArgument(
            f"{origin.what} reads its passphrase from secret key {origin.secret_key!r}; a "
            f"copy opens with the same passphrase, so set secretKey: {origin.secret_key}"
        )
    for field, parameter in _HEADER_FIXED:
        theirs = origin.luks.format.get(field)
        if parameter in parameters and str(parameters[parameter]) != str(theirs):
            raise InvalidArgument(
                f"{origin.what} is encrypted with {parameter} {theirs}; a copy keeps its "
                f"source's LUKS2 header, so it cannot have {parameter} "
                f"{parameters[parameter]}: leave {parameter} out of the StorageClass or set "
                f"it to {theirs}"
            )
    if asked_fs and asked_fs != origin.fs_type:
        raise InvalidArgument(
            f"{origin.what} holds {origin.fs_type}; a copy keeps its filesystem, so it "
            f"cannot be {asked_fs}"
        )


def luks_of_copy(origin: Origin, luks_plan: LuksPlan) -> LuksRecord:
    """The copy's LUKS record: its own plan (how it opens, how new keyslots are stretched)
    with what its source's header fixes."""
    record = LuksRecord.model_validate(luks_plan.to_record())
    for field, _ in _HEADER_FIXED:
        record.format[field] = origin.luks.format.get(field)
    return record


def _key_words(key_source: KeySource) -> str:
    return "a managed key" if key_source == "managed" else "a passphrase"
