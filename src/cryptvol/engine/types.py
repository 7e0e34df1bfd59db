"""The engine's own words for what a CSI request asks, free of protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class AccessType(Enum):
    MOUNT = "mount"
    BLOCK = "block"


class AccessMode(Enum):
    SINGLE_NODE_WRITER = "SINGLE_NODE_WRITER"
    SINGLE_NODE_READER_ONLY = "SINGLE_NODE_READER_ONLY"
    SINGLE_NODE_SINGLE_WRITER = "SINGLE_NODE_SINGLE_WRITER"
    SINGLE_NODE_MULTI_WRITER = "SINGLE_NODE_MULTI_WRITER"
    MULTI_NODE_READER_ONLY = "MULTI_NODE_READER_ONLY"
    MULTI_NODE_SINGLE_WRITER = "MULTI_NODE_SINGLE_WRITER"
    MULTI_NODE_MULTI_WRITER = "MULTI_NODE_MULTI_WRITER"
    UNKNOWN = "UNKNOWN"


SUPPORTED_ACCESS_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)


@dataclass(frozen=True)
class Capability:
    access_type: AccessType
    access_mode: AccessMode
    fs_type: str = ""
    mount_flags: tuple[str, ...] = field(default_factory=tuple)
    # The pod's fsGroup (CSI volume_mount_group) as a decimal gid; empty: none.
    mount_group: str = ""

    @property
    def read_only_mode(self) -> bool:
        return self.access_mode in (
            AccessMode.SINGLE_NODE_READER_ONLY,
            AccessMode.MULTI_NODE_READER_ONLY,
        )
