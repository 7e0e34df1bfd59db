"""Publish mode `host`: a filesystem on the mapping, mounted at the staging path on the host,
bind-mounted at each target. The filesystem is made only on a mapping proven blank.

The engine has refused a path holding a mount that is not this volume's before any step
here runs; each step still touches only this volume's mounts and what it made itself.

A Kata direct publication of a volume staged here releases the staging mount (nothing of a
direct volume stays mounted on the host); a later host publication mounts it again."""

from __future__ import annotations

import stat
from collections.abc import Sequence

from cryptvol.errors import AlreadyExists, FailedPrecondition, quoted
from cryptvol.mounts import filesystem
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import Mount, mounts_at
from cryptvol.mounts.ownership import apply_fs_group
from cryptvol.mounts.paths import NodePath
from cryptvol.system import failpoints


class HostMount:
    name = "host"

    def stage(self, volume: OpenedVolume, staging: NodePath, mount_flags: Sequence[str],
              grow: bool) -> None:
        filesystem.ensure_filesystem(volume.device, volume.fs_type)
        failpoints.reached("stage:after-mkfs")
        made = staging.make_dir()
        mounted = False
        try:
            if not _own_mounts(volume, staging):
                filesystem.mount(volume.device, staging.real, volume.fs_type,
                                 list(mount_flags), False)
                mounted = True
            if grow:
                filesystem.grow(volume.device, staging.real, volume.fs_type)
        except BaseException:
            if mounted:
                filesystem.unmount(staging.real)
            if made:
                staging.remove_dir()
            raise

    def unstage(self, volume: OpenedVolume, staging: NodePath) -> None:
        for _ in _own_mounts(volume, staging):
            filesystem.unmount(staging.real)

    def publish(self, volume: OpenedVolume, staging: NodePath, target: NodePath,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        if not volume.mounts() and _is_dir(staging):
            # Released to a Kata guest by an earlier direct publication: mount it again.
            self.stage(volume, staging, options.mount_flags, grow=False)
        if not _own_mounts(volume, staging):
            raise FailedPrecondition(
                f"volume {volume.volume_id} is not staged at {quoted(staging)}; "
                "call NodeStageVolume"
            )
        try:
            made = target.make_dir()
        except NotADirectoryError:
            raise AlreadyExists(
                f"target_path {quoted(target)} holds a file; a filesystem volume is "
                "published on a directory"
            ) from None
        if not made and not target.is_empty_dir():
            raise AlreadyExists(f"target_path {quoted(target)} holds files; not mounting over "
                                "them")
        try:
            if options.mount_group:
                apply_fs_group(staging.real, int(options.mount_group), read_only,
                               options.fs_group_change_policy or "Always")
            filesystem.bind_mount(staging.real, target.real, read_only)
        except BaseException:
            if made:
                target.remove_dir()
            raise

    def unpublish(self, volume: OpenedVolume, target: NodePath) -> bool:
        # Unmount first: a filesystem that shut down answers a stat of its mountpoint with
        # EIO, and the directory beneath is what is to be removed.
        own = _own_mounts(volume, target)
        for _ in own:
            filesystem.unmount(target.real)
        found = target.lstat()
        if found is not None and stat.S_ISDIR(found.st_mode) and target.is_empty_dir():
            target.remove_dir()  # the directory this mode made, or an empty one kubelet did
            return True
        return bool(own)

    def grow(self, volume: OpenedVolume, volume_path: NodePath) -> bool:
        own = _own_mounts(volume, volume_path)
        if not own or own[-1].fs_type not in filesystem.SUPPORTED:
            return False
        filesystem.grow(volume.device, volume_path.real, own[-1].fs_type)
        return True

    def usage(self, volume: OpenedVolume, volume_path: NodePath) -> Usage | None:
        own = _own_mounts(volume, volume_path)
        if not own or own[-1].fs_type not in filesystem.SUPPORTED:
            return None
        return filesystem.usage(volume_path.real)


def _own_mounts(volume: OpenedVolume, path: NodePath) -> list[Mount]:
    """This volume's filesystem mounts at `path` (a raw block bind is not one)."""
    return [m for m in mounts_at(path.real) if m.dev == volume.rdev and volume.is_open]


def _is_dir(path: NodePath) -> bool:
    found = path.lstat()
    return found is not None and stat.S_ISDIR(found.st_mode)
