"""Proving a device blank by reading it: any non-zero byte anywhere refuses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.system.devices import require_blank

MIB = 1024 * 1024


@pytest.mark.parametrize("offset", [None, 0, 17 * MIB + 5, 32 * MIB - 1])
def test_a_device_is_blank_only_when_every_byte_is_zero(tmp_path: Path, offset) -> None:
    image = tmp_path / "dev.img"
    with open(image, "wb") as f:
        f.truncate(32 * MIB)
        if offset is not None:
            f.seek(offset)
            f.write(b"\x01")
    if offset is None:
        require_blank(str(image))
        return
    with pytest.raises(FailedPrecondition) as info:
        require_blank(str(image))
    assert "unknown kind" in str(info.value)
    assert f"offset {offset - offset % MIB}" in str(info.value)


def test_a_device_with_a_signature_is_not_blank(tmp_path: Path) -> None:
    image = tmp_path / "dev.img"
    with open(image, "wb") as f:
        f.truncate(4 * MIB)
    # An xfs superblock's magic at offset 0 is enough for blkid.
    with open(image, "r+b") as f:
        f.write(b"XFSB" + os.urandom(60))
    with pytest.raises(FailedPrecondition):
        require_blank(str(image))
