"""What every storage pool offers the engine: a provisioning side, a node side, capabilities.

The provisioning side makes, grows and deletes backing volumes; the node side exposes them
as block devices on this node. They are separate objects so a controller process can
provision without touching devices and a node process can attach without provisioning.
Each pool declares its capabilities so the engine can pick a strategy (and refuse a
combination that cannot work) before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

# How a pool makes a snapshot, or a new volume from a snapshot or volume:
# - "thin": copy-on-write inside the pool: constant time, blocks shared, and atomic, so it
#   may be taken while the volume is attached and written;
# - "copy": the bytes are copied: time and space grow with the data, and a copy taken while
#   the volume is written would mix moments, so the engine takes one only of a volume that
#   is not attached;
# - "": the pool cannot.
CopyMethod = Literal["thin", "copy", ""]


@dataclass(frozen=True)
class PoolCapabilities:
    # A backing volume can grow while it is attached and in use.
    online_expand: bool
    snapshot: CopyMethod
    clone: CopyMethod


@dataclass(frozen=True)
class CopySource:
    """What a new volume copies: a snapshot of a volume, or a volume as it is now."""

    volume_id: str
    snapshot_id: str = ""


@dataclass(frozen=True)
class PoolEncryption:
    """Encryption a pool applies itself, beneath every volume's LUKS2 (ZFS native
    encryption): `cipher` is "off" where there is none."""

    cipher: str
    # Where the pool's key is managed (ZFS: the encryption root), and whether it is loaded.
    root: str = ""
    key_loaded: bool = True


@dataclass(frozen=True)
class PoolSpace:
    # What the pool can hold in all: what its volumes occupy now plus what is free to them
    # (a loop pool on a shared filesystem does not count the filesystem's other files).
    # The engine promises at most total_bytes x --overcommit-ratio of volume sizes.
    total_bytes: int
    free_bytes: int


class WriteState(Enum):
    """What a pool knows of whether a backing volume was ever written."""

    # Nothing was ever written: no block of it is allocated (a hole-only loop file, a thin
    # LV with no mapped block, a zvol that has written nothing). It reads as zeros.
    NEVER = "never"
    # Something was written, if only zeros: its content must be read to know more.
    WRITTEN = "written"
    # The pool cannot tell (e.g. a thick volume): its content must be read.
    UNKNOWN = "unknown"


class Provisioner(Protocol):
    """The provisioning side of a pool. Every method is idempotent."""

    def create(self, volume_id: str, size_bytes: int) -> None:
        """Make the backing volume; a repeat with the same size is a no-op."""
        ...

    def delete(self, volume_id: str) -> None:
        """Remove the backing volume; removing an absent one succeeds. It must succeed while
        snapshots of it or copies made from it live: they stay usable, and where they still
        share its storage, that storage is freed when the last of them goes."""
        ...

    def size(self, volume_id: str) -> int | None:
        """The backing volume's size in bytes, or None when it does not exist."""
        ...

    def expand(self, volume_id: str, size_bytes: int) -> int:
        """Grow to at least `size_bytes`; return the new size. Never shrinks."""
        ...

    def in_use(self, volume_id: str) -> bool:
        """Whether something on this host holds the backing volume open (attached)."""
        ...

    def space(self) -> PoolSpace:
        """The pool's size and what is free in it right now."""
        ...

    def free_bytes(self) -> int:
        """`space().free_bytes`, where the pool can tell it for less than its whole size."""
        ...

    def snapshot(self, volume_id: str, snapshot_id: str) -> int:
        """Take a crash-consistent point-in-time copy of the backing volume's bytes; return
        its size. A repeat with the same ids is a no-op that returns the same size."""
        ...

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        """Remove a snapshot; an absent one succeeds. Where copies made from it still depend
        on it, its storage is freed when the last of them goes."""
        ...

    def copy(self, source: CopySource, volume_id: str, size_bytes: int) -> None:
        """Make a new backing volume of at least `size_bytes` holding the source's bytes
        (a snapshot of this pool, or one of its volumes as it is now; a snapshot whose
        volume was deleted still copies). A repeat with the same arguments is a no-op."""
        ...

    def volume_ids(self) -> list[str]:
        """The ids of every backing volume in the pool (snapshots and unfinished temporary
        copies excluded), whatever the state store says: what `cryptvol state check` and
        the start-up check compare with the records. Only names cryptvol makes count."""
        ...

    def store_marker(self) -> str | None:
        """The state-store identity this pool was last used with, or None when it has no
        marker (a new pool, or one from before markers). The driver refuses to start when
        it names another store than the one it opened."""
        ...

    def mark_store(self, store_id: str) -> None:
        """Record `store_id` as this pool's store identity, durably and readable only by
        root (a file 0600, an LVM tag, a ZFS user property); a repeat is a no-op."""
        ...


class NodeAttacher(Protocol):
    """The node side of a pool: backing volumes as block devices on this node."""

    def attach(self, volume_id: str) -> str:
        """Expose the volume as a block device on this node; return its path. Idempotent."""
        ...

    def detach(self, volume_id: str) -> None:
        """Undo `attach`; a volume not attached is a no-op."""
        ...

    def attached_device(self, volume_id: str) -> str | None:
        """The block device the volume is attached as on this node, or None."""
        ...

    def refresh(self, volume_id: str) -> int:
        """Make an attached device see its backing volume's current size; return it."""
        ...

    def written(self, volume_id: str) -> WriteState:
        """Whether the backing volume was ever written, from what the pool itself records
        (allocation), without reading it. NEVER lets the engine format the volume without
        reading it; anything else makes it read the whole device before it may format, so
        a pool must answer NEVER only when it is sure. A copy (a clone, a restored snapshot)
        is never NEVER: it holds its source's bytes, and the engine reads it whatever its
        pool answers. Cheap: called on every first stage."""
        ...


@dataclass(frozen=True)
class Pool:
    """One configured pool: its name (what a StorageClass's `pool` names), its kind (for
    people: logs, doctor), what it can do, and its two sides."""

    name: str
    kind: str
    location: str
    capabilities: PoolCapabilities
    provisioner: Provisioner
    node: NodeAttacher
    # Pools that can encrypt beneath LUKS say how they are set up now (doctor reports it).
    encryption: Callable[[], PoolEncryption] | None = None
