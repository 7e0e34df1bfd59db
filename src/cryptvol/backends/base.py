"""What every storage pool backend offers the engine.

The controller side makes, grows and deletes backing volumes; the node side attaches them
as block devices. Each backend declares its capabilities so the engine can pick a strategy
(and refuse a combination that cannot work) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BackendCapabilities:
    online_expand: bool
    thin_snapshot: bool
    clone: bool
    block_copy: bool


class Backend(Protocol):
    name: str
    capabilities: BackendCapabilities

    def create(self, volume_id: str, size_bytes: int) -> None:
        """Make the backing volume; a repeat with the same size is a no-op."""
        ...

    def delete(self, volume_id: str) -> None:
        """Remove the backing volume; removing an absent one succeeds."""
        ...

    def size(self, volume_id: str) -> int | None:
        """The backing volume's size in bytes, or None when it does not exist."""
        ...

    def expand(self, volume_id: str, size_bytes: int) -> int:
        """Grow to at least `size_bytes`; return the new size. Never shrinks."""
        ...

    def available_bytes(self) -> int:
        """Free space in the pool right now."""
        ...

    def attach(self, volume_id: str) -> str:
        """Expose the volume as a block device on this node; return its path. Idempotent."""
        ...

    def detach(self, volume_id: str) -> None:
        """Undo `attach`; a volume not attached is a no-op."""
        ...

    def attached_device(self, volume_id: str) -> str | None: ...

    def refresh(self, volume_id: str) -> int:
        """Make an attached device see its backing volume's current size; return it."""
        ...
