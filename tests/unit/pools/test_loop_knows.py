"""What a loop pool knows without reading a volume: whether it was ever written, which
volumes it holds, how much it can hold, and which state store it was used with."""

from __future__ import annotations

import os
from pathlib import Path

from cryptvol.pools.base import WriteState
from cryptvol.pools.loop import MARKER_FILE, open_pool

MIB = 1024 * 1024


def test_a_fresh_sparse_file_was_never_written_and_one_with_data_in_its_middle_was(
        tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool"))
    pool.provisioner.create("cv-a", 64 * MIB)
    assert pool.node.written("cv-a") is WriteState.NEVER
    with open(tmp_path / "pool" / "cv-a.img", "r+b") as f:
        f.seek(32 * MIB)  # first and last MiB stay zero
        f.write(os.urandom(4096))
    assert pool.node.written("cv-a") is WriteState.WRITTEN


def test_the_pool_lists_only_the_volumes_it_made(tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    pool.create("cv-b", MIB)
    pool.create("cv-a", MIB)
    for stray in ("notes.txt", "cv-c.img.tmp", ".hidden.img"):
        (tmp_path / "pool" / stray).write_text("x")
    pool.snapshot("cv-a", "sn-1")
    assert pool.volume_ids() == ["cv-a", "cv-b"]


def test_the_pool_size_is_what_its_files_hold_plus_what_is_free(tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    before = pool.space()
    pool.create("cv-a", 8 * MIB)
    with open(tmp_path / "pool" / "cv-a.img", "r+b") as f:
        f.write(os.urandom(2 * MIB))
        os.fsync(f.fileno())
    after = pool.space()
    assert after.free_bytes <= before.free_bytes - 2 * MIB
    # Writing into the pool moves bytes from free to occupied; the pool's size stays
    # (other files on the filesystem may change it meanwhile: allow for them).
    assert abs(after.total_bytes - before.total_bytes) < 64 * MIB


def test_the_store_marker_is_private_and_kept(tmp_path: Path) -> None:
    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    assert pool.store_marker() is None
    pool.mark_store("store-1")
    pool.mark_store("store-1")
    assert pool.store_marker() == "store-1"
    assert (tmp_path / "pool" / MARKER_FILE).stat().st_mode & 0o777 == 0o600
    assert open_pool("p", str(tmp_path / "pool")).provisioner.store_marker() == "store-1"


def test_the_pool_size_is_read_while_volumes_are_deleted(tmp_path: Path, monkeypatch) -> None:
    """Seen under 8 concurrent create+delete clients: CreateVolume failed INTERNAL
    (FileNotFoundError) when a file listed by the size scan was deleted before its stat.
    The listing is made to lose that race every time."""
    import cryptvol.pools.loop as loop

    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    pool.create("cv-a", MIB)
    pool.create("cv-b", MIB)
    listed = os.scandir

    def scandir_then_delete(path):  # type: ignore[no-untyped-def]
        entries = list(listed(path))
        pool.delete("cv-a")  # between the listing and each entry's stat
        return iter(entries)

    monkeypatch.setattr(loop.os, "scandir", scandir_then_delete)
    assert pool.space().total_bytes > 0


def test_a_new_volume_file_and_a_copy_have_durable_names(tmp_path: Path, monkeypatch) -> None:
    """The record of an acknowledged CreateVolume is fsynced; the file's name must be too,
    or a power cut leaves a record whose file is gone. Every fsync still runs: this only
    notes which files it was called on."""
    import stat

    import cryptvol.pools.loop as loop
    from cryptvol.pools.base import CopySource

    synced: list[tuple[bool, set[str]]] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append((is_dir, set(os.listdir(tmp_path / "pool")) if is_dir else set()))
        real_fsync(fd)

    pool = open_pool("p", str(tmp_path / "pool")).provisioner
    monkeypatch.setattr(loop.os, "fsync", noting_fsync)
    pool.create("cv-a", MIB)
    pool.copy(CopySource("cv-a"), "cv-b", MIB)
    folders = [names for is_dir, names in synced if is_dir]
    assert any("cv-a.img" in names for names in folders)
    assert any("cv-b.img" in names for names in folders)
