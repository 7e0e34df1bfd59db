"""Loop pool snapshots and copies are whole, sparse, independent files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.errors import NotFound
from cryptvol.pools.base import CopySource
from cryptvol.pools.loop import open_pool

MIB = 1024 * 1024


def test_a_snapshot_keeps_the_bytes_of_its_moment_and_copies_restore_them(tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    pool.create("cv-a", 4 * MIB)
    source = tmp_path / "pool" / "cv-a.img"
    with open(source, "r+b") as f:
        f.seek(MIB)
        f.write(b"before")
    assert pool.snapshot("cv-a", "sn-1") == 4 * MIB
    assert pool.snapshot("cv-a", "sn-1") == 4 * MIB  # a repeat is a no-op
    with open(source, "r+b") as f:
        f.seek(MIB)
        f.write(b"after!")
    pool.copy(CopySource("cv-a", "sn-1"), "cv-b", 8 * MIB)
    restored = tmp_path / "pool" / "cv-b.img"
    assert restored.stat().st_size == 8 * MIB
    with open(restored, "rb") as f:
        f.seek(MIB)
        assert f.read(6) == b"before"
    assert restored.stat().st_blocks * 512 < MIB  # sparse: only what was written
    assert restored.stat().st_mode & 0o777 == 0o600
    pool.copy(CopySource("cv-a"), "cv-c", 4 * MIB)
    with open(tmp_path / "pool" / "cv-c.img", "rb") as f:
        f.seek(MIB)
        assert f.read(6) == b"after!"


def test_copies_outlive_their_snapshot_and_source(tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    pool.create("cv-a", MIB)
    pool.snapshot("cv-a", "sn-1")
    pool.copy(CopySource("cv-a", "sn-1"), "cv-b", MIB)
    pool.delete_snapshot("cv-a", "sn-1")
    pool.delete_snapshot("cv-a", "sn-1")
    pool.delete("cv-a")
    assert pool.size("cv-b") == MIB
    with pytest.raises(NotFound):
        pool.copy(CopySource("cv-a", "sn-1"), "cv-c", MIB)
