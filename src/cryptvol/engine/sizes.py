"""Volume sizes: what a capacity range resolves to, and what each filesystem needs."""

from __future__ import annotations

from cryptvol.errors import InvalidArgument, OutOfRange

MIB = 1024 * 1024
GIB = 1024 * MIB
# The LUKS2 header and keyslot area cryptsetup reserves by default. The backing volume is
# this much larger than the capacity reported, so a 1 GiB claim really holds 1 GiB.
LUKS2_HEADER_BYTES = 16 * MIB
DEFAULT_BYTES = 1 * GIB
ALIGN_BYTES = MIB
# mkfs.xfs refuses filesystems under 300 MiB since xfsprogs 5.19.
_MINIMUM = {"xfs": 300 * MIB, "ext4": 16 * MIB, None: MIB}


def minimum_bytes(fs_type: str | None) -> int:
    return _MINIMUM.get(fs_type, 16 * MIB)


def capacity_for(required: int, limit: int, minimum: int) -> int:
    """The size to give a volume for a CSI capacity range, aligned to whole MiB."""
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise InvalidArgument(
            f"capacity_range limit_bytes {limit} is below required_bytes {required}"
        )
    wanted = required or (min(DEFAULT_BYTES, limit) if limit else DEFAULT_BYTES)
    wanted = max(wanted, minimum)
    aligned = -(-wanted // ALIGN_BYTES) * ALIGN_BYTES
    if limit and aligned > limit:
        raise OutOfRange(
            f"no size between {required} and {limit} bytes is possible: the volume needs at "
            f"least {max(minimum, required)} bytes in whole MiB"
        )
    return aligned


def copy_capacity(required: int, limit: int, source_bytes: int, source: str) -> int:
    """The size of a volume copied from `source` (a snapshot or volume of `source_bytes`):
    the source's size, or more when asked; never less, since it holds all of the source."""
    if limit and limit < source_bytes:
        raise OutOfRange(
            f"{source} holds {source_bytes} bytes: a volume made from it cannot be limited to "
            f"{limit}; ask for at least {source_bytes} bytes"
        )
    if required and required < source_bytes:
        raise OutOfRange(
            f"{source} holds {source_bytes} bytes: a volume made from it cannot have "
            f"{required}; ask for at least {source_bytes} bytes"
        )
    return capacity_for(required or source_bytes, limit, source_bytes)
