"""What a publish mode does at each node step, for one opened volume.

The engine picks the mode for a stage or publish from the request's capability. Unstage and
unpublish carry no capability, so the engine offers the step to every mode and each undoes
only what it finds of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptvol.mounts.filesystem import Usage


@dataclass(frozen=True)
class OpenedVolume:
    """A volume whose dm-crypt mapping is open on this node."""

    volume_id: str
    device: str  # the mapping's device node, /dev/mapper/<name>
    fs_type: str  # the filesystem it holds or will hold; unused by raw block


@dataclass(frozen=True)
class PublishOptions:
    """What a publication asks beyond its target and read-only flag."""

    mount_flags: tuple[str, ...] = ()
    # The pod's fsGroup (CSI volume_mount_group), a decimal gid; empty: none.
    mount_group: str = ""
    # The pod's fsGroupChangePolicy when the driver could read it: Always, OnRootMismatch.
    fs_group_change_policy: str = ""


NO_OPTIONS = PublishOptions()


class PublishMode(Protocol):
    name: str

    def stage(self, volume: OpenedVolume, staging_path: str, mount_flags: Sequence[str],
              grow: bool) -> None:
        """Make the volume ready at the staging path; `grow` when the mapping grew while
        the volume was not staged (its filesystem must catch up)."""
        ...

    def unstage(self, volume: OpenedVolume, staging_path: str) -> None:
        """Undo this mode's `stage` at the staging path; nothing of its own there: no-op."""
        ...

    def publish(self, volume: OpenedVolume, staging_path: str, target_path: str,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        ...

    def unpublish(self, volume: OpenedVolume, target_path: str) -> bool:
        """Undo this mode's `publish` at the target; False when the target holds nothing
        this mode made for the volume."""
        ...

    def grow(self, volume: OpenedVolume, volume_path: str) -> bool:
        """Grow what the workload sees at `volume_path` to the mapping's size; False when the
        path is not this mode's publication or staging of the volume."""
        ...

    def usage(self, volume: OpenedVolume, volume_path: str) -> Usage | None:
        """What the workload has used at `volume_path`; None when the path is not this
        mode's."""
        ...
