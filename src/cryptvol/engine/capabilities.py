"""Which volume capabilities cryptvol serves: single-node access, filesystem or raw block."""

from __future__ import annotations

from collections.abc import Sequence

from cryptvol.engine.parameters import FSTYPE_KEY, VolumeParameters
from cryptvol.engine.types import SUPPORTED_ACCESS_MODES, AccessType, Capability
from cryptvol.errors import InvalidArgument, quoted
from cryptvol.mounts.filesystem import SUPPORTED as SUPPORTED_FS


def check_capabilities(capabilities: Sequence[Capability]) -> None:
    if not capabilities:
        raise InvalidArgument("volume_capabilities must name at least one capability")
    for cap in capabilities:
        if cap.access_mode not in SUPPORTED_ACCESS_MODES:
            accepted = ", ".join(sorted(m.value for m in SUPPORTED_ACCESS_MODES))
            raise InvalidArgument(
                f"access mode {cap.access_mode.value} is not supported: an encrypted volume "
                f"is opened on one node at a time; accepted modes: {accepted}"
            )
        if cap.access_type is AccessType.MOUNT and cap.fs_type and cap.fs_type not in \
                SUPPORTED_FS:
            raise InvalidArgument(
                f"fs_type {quoted(cap.fs_type)} is not supported; accepted values: "
                f"{', '.join(SUPPORTED_FS)}"
            )


def fs_type_for(capabilities: Sequence[Capability], params: VolumeParameters) -> str:
    """The filesystem a volume gets: the StorageClass's, or the capability's when the class
    names none. Two different answers are a contradiction the user must resolve."""
    return asked_fs_type(capabilities, params) or params.fs_type


def asked_fs_type(capabilities: Sequence[Capability], params: VolumeParameters) -> str | None:
    """The filesystem the request names (capability or StorageClass), or None."""
    asked = {c.fs_type for c in capabilities if c.access_type is AccessType.MOUNT and c.fs_type}
    if len(asked) > 1:
        raise InvalidArgument(
            "capabilities ask for different filesystems: "
            + ", ".join(quoted(fs) for fs in sorted(asked))
        )
    from_class = params.raw.get(FSTYPE_KEY)
    if asked and from_class and asked != {from_class}:
        raise InvalidArgument(
            f"the capability asks for {quoted(asked.pop())} but parameter {FSTYPE_KEY!r} is "
            f"{quoted(from_class)}"
        )
    return asked.pop() if asked else from_class
