"""Publish mode `kata`: a Kata Containers direct-assigned volume.

The node decrypts; the guest mounts. Staging makes the filesystem on a mapping proven blank
and mounts nothing. Publishing writes Kata's mountInfo.json naming the opened dm-crypt
mapping (see `direct_volumes`) and makes the empty target folder kubelet hands to the
container runtime, which Kata replaces with the device. Nothing of the volume is mounted on
the host while it is direct: a staging mount left by a host-mode stage (the runtime-class
trigger is known only at publish) is released first, and a volume that is still published
on the host is refused. One pod at a time: a second target is refused.

Growing asks the shim of the sandbox holding the volume to resize the guest's view; stats
come from the guest through the same shim, or are the device's size when no shim answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Sequence

from cryptvol.errors import AlreadyExists, CryptvolError, FailedPrecondition, InvalidArgument
from cryptvol.mounts import filesystem
from cryptvol.mounts.direct_volumes import DirectVolumes, Entry, MountInfo
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.kata_shim import ShimClient, ShimSocket
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import Mount, mount_at, mounts
from cryptvol.system import failpoints
from cryptvol.system.devices import device_size

log = logging.getLogger(__name__)

FS_GROUP = "fsGroup"
FS_GROUP_CHANGE_POLICY = "fsGroupChangePolicy"
_POLICIES = ("Always", "OnRootMismatch")


class KataDirect:
    name = "kata"

    def __init__(self, volumes: DirectVolumes, shim: ShimClient) -> None:
        self.volumes = volumes
        self.shim = shim

    def stage(self, volume: OpenedVolume, staging_path: str, mount_flags: Sequence[str],
              grow: bool) -> None:
        # The guest mounts the filesystem and grows it (through the shim) itself.
        filesystem.ensure_filesystem(volume.device, volume.fs_type)

    def unstage(self, volume: OpenedVolume, staging_path: str) -> None:
        return None  # staging mounted nothing

    def publish(self, volume: OpenedVolume, staging_path: str, target_path: str,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        _check_target_path(target_path)
        wanted = mount_info(volume, read_only, options)
        for other in self.volumes.published(volume.device):
            if other != target_path:
                raise FailedPrecondition(
                    f"volume {volume.volume_id} is already a Kata direct volume at {other}; "
                    "a direct volume belongs to one pod at a time"
                )
        entry = self.volumes.entry(target_path)
        if entry is not None and entry.info is not None:
            if entry.info.device != volume.device:
                raise FailedPrecondition(
                    f"{target_path} is the Kata direct volume of {entry.info.device}, not of "
                    f"volume {volume.volume_id}"
                )
            if entry.info != wanted:
                raise AlreadyExists(
                    f"volume {volume.volume_id} is already published at {target_path} with "
                    f"other options ({_describe(entry.info)}; asked: {_describe(wanted)})"
                )
        made = _prepare_target(target_path)
        try:
            self._release_host_mounts(volume, staging_path)
            if entry is None or entry.info != wanted:
                self.volumes.write(target_path, wanted)
                failpoints.reached("kata:after-mountinfo")
        except BaseException:
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(target_path)
            raise

    def unpublish(self, volume: OpenedVolume, target_path: str) -> bool:
        _check_target_path(target_path)
        if not self.volumes.remove(target_path, volume.device):
            return False
        _remove_target(target_path)
        return True

    def grow(self, volume: OpenedVolume, volume_path: str) -> bool:
        if self._own_entry(volume, volume_path) is None:
            return False
        shim = self._shim(volume_path)
        size = device_size(volume.device)
        if shim is None:
            log.info("direct volume grown; no sandbox holds it: its guest sees the new size "
                     "at its next start", extra={"volume": volume.volume_id, "bytes": size})
            return True
        self.shim.resize(shim, volume.device, size)
        log.info("direct volume grown in its guest",
                 extra={"volume": volume.volume_id, "bytes": size, "shim": str(shim.path)})
        return True

    def usage(self, volume: OpenedVolume, volume_path: str) -> Usage | None:
        if self._own_entry(volume, volume_path) is None:
            return None
        try:
            shim = self._shim(volume_path)
            if shim is not None:
                return self.shim.stats(shim, volume.device)
        except CryptvolError as exc:
            log.warning("guest volume stats unavailable; reporting the device size",
                        extra={"volume": volume.volume_id, "error": str(exc)})
        return Usage(device_size(volume.device), 0, 0, 0, 0, 0)

    def refuse_if_direct(self, volume: OpenedVolume) -> None:
        """Refuse a host or block publication of a volume a Kata guest holds."""
        for target in self.volumes.published(volume.device):
            raise FailedPrecondition(
                f"volume {volume.volume_id} is a Kata direct volume at {target}; it cannot "
                "also be published on the host (one pod at a time); unpublish it first"
            )

    def _own_entry(self, volume: OpenedVolume, volume_path: str) -> Entry | None:
        if not os.path.isabs(volume_path):
            return None
        try:
            entry = self.volumes.entry(volume_path)
        except InvalidArgument:
            return None
        if entry is None or entry.info is None or entry.info.device != volume.device:
            return None
        return entry

    def _shim(self, volume_path: str) -> ShimSocket | None:
        """The live shim of the sandbox Kata recorded for the volume, if any."""
        entry = self.volumes.entry(volume_path)
        for sandbox_id in entry.sandbox_ids if entry else ():
            found = self.shim.socket(sandbox_id)
            if found is not None:
                return found
        return None

    def _release_host_mounts(self, volume: OpenedVolume, staging_path: str) -> None:
        """Unmount the volume's own staging mount; refuse while it is published on the host.
        The guest and the host must never both mount one filesystem."""
        held = _mounts_of(volume.device)
        elsewhere = sorted({m.target for m in held} - {os.path.realpath(staging_path)})
        if elsewhere:
            raise FailedPrecondition(
                f"volume {volume.volume_id} is mounted on the host at {', '.join(elsewhere)}; "
                "a Kata direct volume must not be (one pod at a time): unpublish it there first"
            )
        if held:
            filesystem.unmount(staging_path)
            log.info("staging mount released: the volume goes to a Kata guest",
                     extra={"volume": volume.volume_id, "staging": staging_path})


def mount_info(volume: OpenedVolume, read_only: bool, options: PublishOptions) -> MountInfo:
    metadata: dict[str, str] = {}
    # Kata's runtime accepts group ids 1 to 2^32-1 only: gid 0 is left out (the root group
    # owns a new filesystem anyway).
    if options.mount_group and options.mount_group != "0":
        metadata[FS_GROUP] = options.mount_group
        if options.fs_group_change_policy in _POLICIES:
            metadata[FS_GROUP_CHANGE_POLICY] = options.fs_group_change_policy
    flags = [f for f in options.mount_flags if f not in ("ro", "rw")]
    if read_only:
        flags.append("ro")
    return MountInfo(device=volume.device, fs_type=volume.fs_type, metadata=metadata,
                     options=tuple(flags))


def _describe(info: MountInfo) -> str:
    parts = [",".join(info.options) or "read-write"]
    parts += [f"{k}={v}" for k, v in sorted(info.metadata.items())]
    return " ".join(parts)


def _mounts_of(device: str) -> list[Mount]:
    real = os.path.realpath(device)
    return [m for m in mounts() if m.source.startswith("/")
            and os.path.realpath(m.source) == real]


# --- path safety -------------------------------------------------------------------------
# A minimal stand-in for the node-path safety module of issue 10 (branch `safety`): the
# lead swaps these two checks for the shared module at merge. Target paths must be
# absolute, normalised and reached through no symlink; the direct-volume root is the second
# root this mode writes under, and `direct_volumes` opens every name there without
# following symlinks.

def _check_target_path(path: str) -> None:
    if not os.path.isabs(path) or os.path.normpath(path) != path.rstrip("/") or "//" in path:
        raise InvalidArgument(f"target_path {path!r} must be an absolute, normalised path")
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise FailedPrecondition(f"target_path {path}: {current} is a symlink; refused")


def _prepare_target(path: str) -> bool:
    """The empty folder kubelet expects at the target; True when this call made it."""
    try:
        os.mkdir(path, 0o750)
        return True
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(
            f"target_path {path} exists and is not a directory; it is refused, not replaced"
        )
    existing = mount_at(path)
    if existing is not None:
        raise FailedPrecondition(
            f"target_path {path} is a mount of {existing.source}; a Kata direct volume is "
            "never mounted on the host"
        )
    if os.listdir(path):
        raise FailedPrecondition(
            f"target_path {path} holds files the driver did not make; refusing to publish there"
        )
    return False


def _remove_target(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or mount_at(path) is not None or os.listdir(path):
        log.warning("target left in place: not the empty folder the driver made",
                    extra={"target": path})
        return
    os.rmdir(path)
