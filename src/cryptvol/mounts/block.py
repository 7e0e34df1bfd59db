"""Publish mode `block`: raw block access. Nothing is made at staging; each target is a file
onto which the mapping's device node is bind-mounted."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptvol.mounts import filesystem
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.system.devices import device_size


class BlockBind:
    name = "block"

    def stage(self, volume: OpenedVolume, staging_path: str, mount_flags: Sequence[str],
              grow: bool) -> None:
        return None  # the open mapping is all a raw block volume needs

    def unstage(self, volume: OpenedVolume, staging_path: str) -> None:
        return None

    def publish(self, volume: OpenedVolume, staging_path: str, target_path: str,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        if not os.path.exists(target_path):
            Path(target_path).touch(mode=0o600)
        filesystem.bind_mount(volume.device, target_path, read_only)

    def unpublish(self, volume: OpenedVolume, target_path: str) -> bool:
        if not os.path.isfile(target_path) and not _is_block(target_path):
            return False
        filesystem.unmount(target_path)
        os.unlink(target_path)
        return True

    def grow(self, volume: OpenedVolume, volume_path: str) -> bool:
        # The workload sees the mapping itself, which the engine has already grown.
        return _is_block(volume_path)

    def usage(self, volume: OpenedVolume, volume_path: str) -> Usage | None:
        if not _is_block(volume_path):
            return None
        return Usage(device_size(volume.device), 0, 0, 0, 0, 0)


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
