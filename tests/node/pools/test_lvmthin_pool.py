"""What an LVM thin pool knows without reading a volume (in the VM, real LVM and dm-thin):
whether a thin LV was ever written, which volumes it holds (not its snapshots), and which
state store it was used with, kept as a tag of the thin pool LV.

The tests make a small thin pool of their own in the session's volume group, so nothing
here is seen by the session driver's pool (VG/pool), whose start-up checks compare the
volumes and the marker of its pool with its store."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from cryptvol.pools.base import CopySource, Pool, WriteState
from cryptvol.pools.lvmthin import STORE_TAG, open_pool
from cryptvol.system import CommandError, run

MIB = 1024 * 1024
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def lvm(*args: str) -> str:
    return run(["lvm", *args], env=LVM_ENV, timeout=300).stdout


@pytest.fixture(scope="module")
def pool(thin_pool: str) -> Iterator[Pool]:
    name = f"pt{uuid.uuid4().hex[:6]}"
    lvm("lvcreate", "-q", "--type", "thin-pool", "-L", "128M", "-n", name, thin_pool)
    yield open_pool("t", f"{thin_pool}/{name}")
    with contextlib.suppress(CommandError):
        lvm("lvremove", "-q", "-f", f"{thin_pool}/{name}")


def test_a_thin_lv_no_block_was_mapped_in_was_never_written_and_a_copy_always_was(
        pool: Pool) -> None:
    """What lets the engine format a new volume without reading it all first."""
    a, b = "cv-blank", "cv-blank-copy"
    pool.provisioner.create(a, 32 * MIB)
    try:
        pool.node.attach(a)
        assert pool.node.written(a) is WriteState.NEVER
        pool.provisioner.copy(CopySource(a), b, 32 * MIB)
        assert pool.node.written(b) is WriteState.WRITTEN  # its source's bytes, if any
        with open(pool.node.attach(a), "r+b") as f:
            f.seek(16 * MIB)  # one block in the middle: a percentage would round it away
            f.write(os.urandom(4096))
            os.fsync(f.fileno())
        assert pool.node.written(a) is WriteState.WRITTEN
    finally:
        for vid in (b, a):
            pool.node.detach(vid)
            pool.provisioner.delete(vid)


def test_the_pool_lists_its_volumes_not_their_snapshots_and_keeps_the_store_identity(
        pool: Pool) -> None:
    provisioner = pool.provisioner
    provisioner.create("cv-listed", 16 * MIB)
    provisioner.snapshot("cv-listed", "cs-of-listed")
    provisioner.copy(CopySource("cv-listed", "cs-of-listed"), "cv-restored", 16 * MIB)
    try:
        assert provisioner.volume_ids() == ["cv-listed", "cv-restored"]
        assert provisioner.store_marker() is None
        provisioner.mark_store("store-1f2e")
        provisioner.mark_store("store-1f2e")
        provisioner.mark_store("store-9a8b")  # a store adopted later replaces the tag
        assert provisioner.store_marker() == "store-9a8b"
        tags = lvm("lvs", "--noheadings", "-o", "lv_tags", pool.location).strip().split(",")
        assert [t for t in tags if t.startswith(STORE_TAG)] == [STORE_TAG + "store-9a8b"]
    finally:
        for vid in ("cv-restored", "cv-listed"):
            provisioner.delete(vid)
        provisioner.delete_snapshot("cv-listed", "cs-of-listed")
    assert provisioner.volume_ids() == []
