"""The records cryptvol keeps about volumes, and their one encoding (JSON, by pydantic)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

VolumeState = Literal["creating", "ready", "deleting"]
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


class VolumeRecord(Record):
    capacity_bytes: int
    backing_bytes: int
    parameters: dict[str, str]
    fs_type: str
    key_source: Literal["managed", "secret"]
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


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode()
