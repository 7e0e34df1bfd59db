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

import logging
import stat
from collections.abc import Sequence

from cryptvol.errors import AlreadyExists, CryptvolError, FailedPrecondition, quoted
from cryptvol.mounts import filesystem
from cryptvol.mounts.direct_volumes import DirectVolumes, Entry, MountInfo
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.kata_shim import ShimClient, ShimSocket
from cryptvol.mounts.modes import NO_OPTIONS, OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import mount_at
from cryptvol.mounts.paths import NodePath
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

    def stage(self, volume: OpenedVolume, staging: NodePath, mount_flags: Sequence[str],
              grow: bool) -> None:
        # The guest mounts the filesystem and grows it (through the shim) itself.
        filesystem.ensure_filesystem(volume.device, volume.fs_type)

    def unstage(self, volume: OpenedVolume, staging: NodePath) -> None:
        return None  # staging mounted nothing

    def publish(self, volume: OpenedVolume, staging: NodePath, target: NodePath,
                read_only: bool, options: PublishOptions = NO_OPTIONS) -> None:
        wanted = mount_info(volume, read_only, options)
        for other in self.targets(volume):
            if other != target.path:
                raise FailedPrecondition(
                    f"volume {volume.volume_id} is already a Kata direct volume at "
                    f"{quoted(other)}; a direct volume belongs to one pod at a time"
                )
        entry = self.volumes.entry(target.path)
        if entry is not None and entry.info is not None:
            if entry.info.device != volume.device:
                raise FailedPrecondition(
                    f"{quoted(target)} is the Kata direct volume of "
                    f"{quoted(entry.info.device)}, not of volume {volume.volume_id}"
                )
            if entry.info != wanted:
                raise AlreadyExists(
                    f"volume {volume.volume_id} is already published at {quoted(target)} with "
                    f"other options ({_describe(entry.info)}; asked: {_describe(wanted)})"
                )
        made = _prepare_target(target)
        try:
            self._release_host_mounts(volume, staging)
            if entry is None or entry.info != wanted:
                self.volumes.write(target.path, wanted)
                failpoints.reached("kata:after-mountinfo")
        except BaseException:
            if made:
                target.remove_dir()
            raise

    def unpublish(self, volume: OpenedVolume, target: NodePath) -> bool:
        if not self.volumes.remove(target.path, volume.device):
            return False
        _remove_target(target)
        return True

    def grow(self, volume: OpenedVolume, volume_path: NodePath) -> bool:
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

    def usage(self, volume: OpenedVolume, volume_path: NodePath) -> Usage | None:
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

    def targets(self, volume: OpenedVolume) -> list[str]:
        """The targets at which a Kata guest holds the volume (its mountInfo.json names the
        mapping); nothing of them is mounted on the host."""
        return self.volumes.published(volume.device)

    def refuse_if_direct(self, volume: OpenedVolume) -> None:
        """Refuse a host or block publication of a volume a Kata guest holds."""
        for target in self.targets(volume):
            raise FailedPrecondition(
                f"volume {volume.volume_id} is a Kata direct volume at {quoted(target)}; it "
                "cannot also be published on the host (one pod at a time); unpublish it first"
            )

    def _own_entry(self, volume: OpenedVolume, volume_path: NodePath) -> Entry | None:
        entry = self.volumes.entry(volume_path.path)
        if entry is None or entry.info is None or entry.info.device != volume.device:
            return None
        return entry

    def _shim(self, volume_path: NodePath) -> ShimSocket | None:
        """The live shim of the sandbox Kata recorded for the volume, if any."""
        entry = self.volumes.entry(volume_path.path)
        for sandbox_id in entry.sandbox_ids if entry else ():
            found = self.shim.socket(sandbox_id)
            if found is not None:
                return found
        return None

    def _release_host_mounts(self, volume: OpenedVolume, staging: NodePath) -> None:
        """Unmount the volume's own staging mount; refuse while it is published on the host.
        The guest and the host must never both mount one filesystem."""
        held = volume.mounts()
        elsewhere = sorted({m.target for m in held} - {staging.real})
        if elsewhere:
            raise FailedPrecondition(
                f"volume {volume.volume_id} is mounted on the host at "
                f"{', '.join(quoted(t) for t in elsewhere)}; a Kata direct volume must not be "
                "(one pod at a time): unpublish it there first"
            )
        for _ in held:
            filesystem.unmount(staging.real)
        if held:
            log.info("staging mount released: the volume goes to a Kata guest",
                     extra={"volume": volume.volume_id, "staging": str(staging)})


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


# --- the target kubelet hands to the runtime -----------------------------------------------
# The engine checked the target with mounts.paths (no symlink, inside kubelet's dir) and
# refused one holding a mount that is not this volume's; these act through that walk.

def _prepare_target(target: NodePath) -> bool:
    """The empty folder kubelet expects at the target; True when this call made it."""
    try:
        made = target.make_dir()
    except NotADirectoryError:
        raise FailedPrecondition(
            f"target_path {quoted(target)} exists and is not a directory; it is refused, not "
            "replaced"
        ) from None
    existing = mount_at(target.real)
    if existing is not None:
        raise FailedPrecondition(
            f"target_path {quoted(target)} is a mount of {quoted(existing.source)}; a Kata "
            "direct volume is never mounted on the host"
        )
    if not made and not target.is_empty_dir():
        raise FailedPrecondition(
            f"target_path {quoted(target)} holds files the driver did not make; refusing to "
            "publish there"
        )
    return made


def _remove_target(target: NodePath) -> None:
    found = target.lstat()
    if found is None:
        return
    if not stat.S_ISDIR(found.st_mode) or mount_at(target.real) is not None \
            or not target.is_empty_dir():
        log.warning("target left in place: not the empty folder the driver made",
                    extra={"target": str(target)})
        return
    target.remove_dir()
