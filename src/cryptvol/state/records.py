"""The records cryptvol keeps about volumes, and their one encoding (JSON, by pydantic)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

VolumeState = Literal["creating", "ready", "deleting"]
SnapshotState = Literal["creating", "ready", "deleting"]
KeySource = Literal["managed", "secret"]
DEFAULT_POOL = "default"


class Record(BaseModel):
    """What every record kind has: an id, and the create name that maps to it."""

    id: str
    name: str


class LuksRecord(BaseModel):
    """The LUKS parameters a volume was planned with, and why."""

    format: dict[str, object]
    open: dict[str, object]
    reasons: list[str]
    unlock_memory_kib: int = 0
    pbkdf_asked: str = "auto"
    fell_back: bool = False


class ContentSource(BaseModel):
    """What a volume was copied from: a snapshot, or another volume as it was then."""

    kind: Literal["snapshot", "volume"]
    id: str


class VolumeRecord(Record):
    capacity_bytes: int
    backing_bytes: int
    parameters: dict[str, str]
    fs_type: str
    key_source: KeySource
    secret_key: str = "passphrase"
    # The configured pool the backing volume lives in; records written before pools were
    # configurable name the one loop pool that existed, which `--pool-dir` now calls default.
    pool: str = DEFAULT_POOL
    node_id: str
    luks: LuksRecord
    state: VolumeState = "creating"
    created_at: float = Field(default_factory=time.time)
    # Set when the node has grown the mapping and filesystem to `capacity_bytes`.
    node_capacity_bytes: int = 0
    # What made the volume a Kata direct-assigned volume at CreateVolume ("storageclass" or
    # "pvc-annotation"); empty: not direct unless its pod's runtime class says so.
    kata_direct: str = ""
    # A copy of a snapshot or volume; its bytes (and LUKS2 header) are its source's.
    content_source: ContentSource | None = None
    # A managed copy's DEK is still its source's until its first stage gives it its own.
    rekey: bool = False
    # cloneReencrypt: "pending" until LUKS2 reencryption has given the copy its own volume
    # key; `reencrypt_from` is the header's volume-key digest when it began, so a restage
    # after a crash can tell a finished reencryption from one never started.
    reencrypt: Literal["", "pending", "done"] = ""
    reencrypt_from: str = ""


class SnapshotRecord(Record):
    """A point-in-time copy of a volume's backing bytes, and what a restore needs from its
    source, which may be deleted long before the snapshot is."""

    source_volume_id: str
    pool: str
    # The source's usable size when taken: the smallest volume it restores into.
    size_bytes: int
    backing_bytes: int
    fs_type: str
    key_source: KeySource
    secret_key: str = "passphrase"
    # The source's LUKS2 header parameters: a restore keeps its cipher and sector size.
    luks: LuksRecord
    node_id: str
    state: SnapshotState = "creating"
    created_at: float = Field(default_factory=time.time)


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode()
