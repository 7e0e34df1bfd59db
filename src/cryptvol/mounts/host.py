"""Publish mode `host`: a filesystem on the mapping, mounted at the staging path on the host,
bind-mounted at each target. The filesystem is made only on a mapping proven blank.

A Kata direct publication of a volume staged here releases the staging mount (nothing of a
direct volume stays mounted on the host); a later host publication mounts it again."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptvol.errors import AlreadyExists, FailedPrecondition
from cryptvol.mounts import filesystem
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import mount_at
from cryptvol.mounts.ownership import apply_fs_group
from cryptvol.system import failpoints


class HostMount:
    name = "host"

    def stage(self, volume: OpenedVolume, staging_path: str, mount_flags: Sequence[str],
              grow: bool) -> None:
        filesystem.ensure_filesystem(volume.device, volume.fs_type)
        failpoints.reached("stage:after-mkfs")
        os.makedirs(staging_path, exist_ok=True)
        filesystem.mount(volume.device, staging_path, volume.fs_type, list(mount_flags), False)
        if grow:
            filesystem.grow(volume.device, staging_path, volume.fs_type)

    def unstage(self, volume: OpenedVolume, staging_path: str) -> None:
        filesystem.unmount(staging_path)

    def publish(self, volume: OpenedVolume, staging_path: str, target_path: str,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        staged = mount_at(staging_path)
        if staged is None and os.path.isdir(staging_path):
            # Released to a Kata guest by an earlier direct publication: mount it again.
            self.stage(volume, staging_path, options.mount_flags, grow=False)
            staged = mount_at(staging_path)
        if staged is None or os.path.realpath(staged.source) != os.path.realpath(volume.device):
            raise FailedPrecondition(
                f"volume {volume.volume_id} is not staged at {staging_path}; "
                "call NodeStageVolume"
            )
        os.makedirs(target_path, exist_ok=True)
        existing = mount_at(target_path)
        if existing is not None and existing.read_only != read_only:
            raise AlreadyExists(
                f"{target_path} is already published "
                f"{'read-only' if existing.read_only else 'read-write'}"
            )
        if options.mount_group:
            apply_fs_group(staging_path, int(options.mount_group), read_only,
                           options.fs_group_change_policy or "Always")
        filesystem.bind_mount(staging_path, target_path, read_only)

    def unpublish(self, volume: OpenedVolume, target_path: str) -> bool:
        if not os.path.isdir(target_path):
            return False
        filesystem.unmount(target_path)
        os.rmdir(target_path)
        return True

    def grow(self, volume: OpenedVolume, volume_path: str) -> bool:
        mounted = mount_at(volume_path)
        if mounted is None or mounted.fs_type not in filesystem.SUPPORTED:
            return False
        filesystem.grow(volume.device, volume_path, mounted.fs_type)
        return True

    def usage(self, volume: OpenedVolume, volume_path: str) -> Usage | None:
        if not os.path.isdir(volume_path) or mount_at(volume_path) is None:
            return None
        return filesystem.usage(volume_path)
