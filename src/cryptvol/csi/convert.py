"""Protobuf messages to and from the engine's own types; required fields checked here."""

from __future__ import annotations

from collections.abc import Iterable

from cryptvol.csi.gen import csi_pb2
from cryptvol.engine.types import AccessMode, AccessType, Capability
from cryptvol.errors import InvalidArgument
from cryptvol.state.records import ContentSource

# (gid_t)-1 means "no change" to chown: never a group.
_NO_GID = 2**32 - 1
_MODES = {
    csi_pb2.VolumeCapability.AccessMode.Mode.Value(m.value): m
    for m in AccessMode
}


def capability(cap: csi_pb2.VolumeCapability) -> Capability:
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgument("a volume capability must set access_type (mount or block)")
    if not cap.HasField("access_mode"):
        raise InvalidArgument("a volume capability must set access_mode")
    mode = _MODES.get(cap.access_mode.mode, AccessMode.UNKNOWN)
    if kind == "block":
        return Capability(AccessType.BLOCK, mode)
    group = cap.mount.volume_mount_group
    if group and not (group.isascii() and group.isdigit() and int(group) < _NO_GID):
        raise InvalidArgument(
            f"volume_mount_group {group!r} is not a group id (a decimal number below {_NO_GID})"
        )
    return Capability(AccessType.MOUNT, mode, cap.mount.fs_type, tuple(cap.mount.mount_flags),
                      mount_group=str(int(group)) if group else "")


def capabilities(caps: Iterable[csi_pb2.VolumeCapability]) -> list[Capability]:
    return [capability(c) for c in caps]


def require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


def source_of(source: csi_pb2.VolumeContentSource) -> ContentSource:
    kind = source.WhichOneof("type")
    if kind == "snapshot":
        return ContentSource(kind="snapshot",
                             id=require(source.snapshot.snapshot_id, "snapshot_id"))
    if kind == "volume":
        return ContentSource(kind="volume", id=require(source.volume.volume_id, "volume_id"))
    raise InvalidArgument("volume_content_source must name a snapshot or a volume")


def content_source(source: ContentSource | None) -> csi_pb2.VolumeContentSource | None:
    if source is None:
        return None
    if source.kind == "snapshot":
        return csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=source.id))
    return csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.id))
