"""What a publish mode does at each node step, for one opened volume.

The engine picks the mode for a stage or publish from the request's capability. Unstage and
unpublish carry no capability, so the engine offers the step to every mode and each undoes
only what it finds of its own.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.mountinfo import Mount, mounts, mounts_at
from cryptvol.mounts.paths import NodePath


@dataclass(frozen=True)
class OpenedVolume:
    """A volume and its dm-crypt mapping on this node (`rdev` 0: the mapping is not open).

    Whether a mount is this volume's is decided by device numbers, never by names: a mount
    of the filesystem on the mapping (its staging mount, or a bind of it) has the mapping's
    device number; a raw block publication is a bind of the mapping's device node, whose
    status shows that number as the device it stands for."""

    volume_id: str
    device: str  # the mapping's device node, /dev/mapper/<name>
    fs_type: str  # the filesystem it holds or will hold; unused by raw block
    rdev: int = 0  # the mapping's device number
    node_dev: int = 0  # the device number of the filesystem holding the node (devtmpfs)

    @classmethod
    def of(cls, volume_id: str, device: str, fs_type: str) -> OpenedVolume:
        try:
            node = os.stat(device)
        except FileNotFoundError:
            return cls(volume_id, device, fs_type)
        if not stat.S_ISBLK(node.st_mode):
            return cls(volume_id, device, fs_type)
        return cls(volume_id, device, fs_type, node.st_rdev, node.st_dev)

    @property
    def is_open(self) -> bool:
        return self.rdev != 0

    def owns(self, mount: Mount) -> bool:
        """Whether `mount` is this volume: its filesystem, or a bind of its device node."""
        if not self.rdev:
            return False
        if mount.dev == self.rdev:
            return True
        if mount.dev != self.node_dev or mount.root == "/":
            return False
        try:  # a bind of a device node: the mountpoint's status is the node's
            found = os.stat(mount.target)
        except OSError:
            return False
        return stat.S_ISBLK(found.st_mode) and found.st_rdev == self.rdev

    def mounts(self) -> list[Mount]:
        """Every mount of this volume on this node."""
        return [m for m in mounts() if self.owns(m)] if self.rdev else []

    def foreign_mount_at(self, path: NodePath) -> Mount | None:
        """A mount at `path` that is not this volume's, if any: a path holding one is
        someone else's, and no step acts on it."""
        return next((m for m in mounts_at(path.real) if not self.owns(m)), None)


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
    """Every path is a checked `NodePath`, and the engine has refused one holding a mount
    that is not this volume's. A step that fails undoes what it did itself."""

    name: str

    def stage(self, volume: OpenedVolume, staging: NodePath, mount_flags: Sequence[str],
              grow: bool) -> None:
        """Make the volume ready at the staging path; `grow` when the mapping grew while
        the volume was not staged (its filesystem must catch up)."""
        ...

    def unstage(self, volume: OpenedVolume, staging: NodePath) -> None:
        """Undo this mode's `stage` at the staging path; nothing of its own there: no-op."""
        ...

    def publish(self, volume: OpenedVolume, staging: NodePath, target: NodePath,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        """Publish at a target that holds no mount: AlreadyExists when it holds something
        this mode cannot publish on (files, another kind of target)."""
        ...

    def unpublish(self, volume: OpenedVolume, target: NodePath) -> bool:
        """Undo this mode's `publish` at the target: unmount this volume there and remove
        the target if this mode made it. False when the target holds nothing of this mode
        for the volume (and then nothing is touched)."""
        ...

    def grow(self, volume: OpenedVolume, volume_path: NodePath) -> bool:
        """Grow what the workload sees at `volume_path` to the mapping's size; False when the
        path is not this mode's publication or staging of the volume."""
        ...

    def usage(self, volume: OpenedVolume, volume_path: NodePath) -> Usage | None:
        """What the workload has used at `volume_path`; None when the path is not this
        mode's."""
        ...
