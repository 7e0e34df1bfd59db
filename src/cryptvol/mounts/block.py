"""Publish mode `block`: raw block access. Nothing is made at staging; each target is a file
onto which the mapping's device node is bind-mounted.

The engine has refused a target holding a mount that is not this volume's before any step
here runs; each step still touches only this volume's binds and the file it made."""

from __future__ import annotations

import stat
from collections.abc import Sequence

from cryptvol.errors import AlreadyExists, quoted
from cryptvol.mounts import filesystem
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import Mount, mounts_at
from cryptvol.mounts.paths import NodePath
from cryptvol.system.devices import device_size


class BlockBind:
    name = "block"

    def stage(self, volume: OpenedVolume, staging: NodePath, mount_flags: Sequence[str],
              grow: bool) -> None:
        return None  # the open mapping is all a raw block volume needs

    def unstage(self, volume: OpenedVolume, staging: NodePath) -> None:
        return None

    def publish(self, volume: OpenedVolume, staging: NodePath, target: NodePath,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        try:
            made = target.make_file(0o600)
        except IsADirectoryError:
            raise AlreadyExists(
                f"target_path {quoted(target)} is not a regular file; a raw block volume is "
                "published on a file"
            ) from None
        found = target.lstat()
        if not made and (found is None or found.st_size != 0):
            raise AlreadyExists(f"target_path {quoted(target)} holds data; not mounting over it")
        try:
            filesystem.bind_mount(volume.device, target.real, read_only)
        except BaseException:
            if made:
                target.remove_file()
            raise

    def unpublish(self, volume: OpenedVolume, target: NodePath) -> bool:
        own = _own_binds(volume, target)
        if not own:
            # An empty file and no bind: this mode's target, left by an unpublish cut short
            # between its unmount and its unlink.
            found = target.lstat()
            if found is None or not stat.S_ISREG(found.st_mode) or found.st_size != 0:
                return False
        for _ in own:
            filesystem.unmount(target.real)
        target.remove_file()
        return True

    def grow(self, volume: OpenedVolume, volume_path: NodePath) -> bool:
        # The workload sees the mapping itself, which the engine has already grown.
        return bool(_own_binds(volume, volume_path))

    def usage(self, volume: OpenedVolume, volume_path: NodePath) -> Usage | None:
        if not _own_binds(volume, volume_path):
            return None
        return Usage(device_size(volume.device), 0, 0, 0, 0, 0)


def _own_binds(volume: OpenedVolume, path: NodePath) -> list[Mount]:
    """Binds of this volume's device node at `path`."""
    return [m for m in mounts_at(path.real) if m.dev != volume.rdev and volume.owns(m)]
