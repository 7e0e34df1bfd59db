"""The SQLite store opened read-only, backed up while in use, and restored in place."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from cryptvol.errors import AlreadyExists, FailedPrecondition, NotFound
from cryptvol.store.base import Put
from cryptvol.store.sqlite import SqliteStore
from cryptvol.store.sqlite_backup import backup, restore


@pytest.fixture
def live(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "state" / "cryptvol.db")
    store.txn([], [Put(f"/cryptvol/volumes/v{i}", b"record") for i in range(5)])
    yield store  # type: ignore[misc]
    store.close()


def _keys(path: Path) -> list[str]:
    store = SqliteStore(path, readonly=True)
    try:
        return [e.key for e in store.range("")]
    finally:
        store.close()


def test_a_read_only_open_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no state store at"):
        SqliteStore(tmp_path / "typo" / "cryptvol.db", readonly=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty.db").touch()
    with pytest.raises(NotFound, match="holds no cryptvol state"):
        SqliteStore(tmp_path / "empty.db", readonly=True)


def test_a_backup_taken_mid_transaction_holds_only_what_was_committed(
    live: SqliteStore, tmp_path: Path
) -> None:
    writer = sqlite3.connect(live.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO kv (key, value, revision) VALUES ('/half', x'00', 99)")
    copied = backup(live.path, tmp_path / "backup.db")
    writer.execute("COMMIT")
    writer.close()
    assert copied.entries == 5
    assert "/half" not in _keys(tmp_path / "backup.db")
    assert stat.S_IMODE((tmp_path / "backup.db").stat().st_mode) == 0o600
    # One self-contained file in rollback-journal mode (header bytes 18-19 are 1, not 2).
    assert (tmp_path / "backup.db").read_bytes()[18:20] == b"\x01\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "state"]


def test_a_backup_never_overwrites_unless_asked(live: SqliteStore, tmp_path: Path) -> None:
    target = tmp_path / "backup.db"
    target.write_bytes(b"precious")
    with pytest.raises(AlreadyExists, match="--force"):
        backup(live.path, target)
    assert target.read_bytes() == b"precious"
    backup(live.path, target, replace=True)
    assert len(_keys(target)) == 5


def test_a_restore_is_refused_while_the_store_is_open(live: SqliteStore, tmp_path: Path) -> None:
    backup(live.path, tmp_path / "backup.db")
    with pytest.raises(FailedPrecondition, match="stop it before restoring"):
        restore(tmp_path / "backup.db", live.path, replace=True)


def test_a_restore_refuses_a_store_with_state_unless_asked(
    live: SqliteStore, tmp_path: Path
) -> None:
    backup(live.path, tmp_path / "backup.db")
    live.txn([], [Put("/cryptvol/volumes/later", b"record")])
    live.close()
    with pytest.raises(FailedPrecondition, match="holds 6 entries"):
        restore(tmp_path / "backup.db", live.path)
    assert len(_keys(live.path)) == 6
    restore(tmp_path / "backup.db", live.path, replace=True)
    assert len(_keys(live.path)) == 5


def test_a_restore_replaces_an_empty_store_and_drops_a_stale_wal(tmp_path: Path) -> None:
    source = SqliteStore(tmp_path / "source.db")
    source.txn([], [Put("/cryptvol/keys/keyset", b"set")])
    backup(source.path, tmp_path / "backup.db")
    source.close()
    state = tmp_path / "state"
    state.mkdir()
    (state / "cryptvol.db").touch()  # what `truncate -s0` leaves
    (state / "cryptvol.db-wal").write_bytes(os.urandom(4096))
    copied = restore(tmp_path / "backup.db", state / "cryptvol.db")
    assert copied.entries == 1
    assert sorted(p.name for p in state.iterdir()) == ["cryptvol.db"]
    reopened = SqliteStore(state / "cryptvol.db")  # as the driver opens it: WAL again
    try:
        assert [e.key for e in reopened.range("")] == ["/cryptvol/keys/keyset"]
        assert reopened.txn([], [Put("/after", b"x")])
    finally:
        reopened.close()


def test_a_restore_into_a_missing_state_dir_makes_it(tmp_path: Path) -> None:
    source = SqliteStore(tmp_path / "source.db")
    source.txn([], [Put("/k", b"v")])
    backup(source.path, tmp_path / "backup.db")
    source.close()
    restore(tmp_path / "backup.db", tmp_path / "new" / "state" / "cryptvol.db")
    assert _keys(tmp_path / "new" / "state" / "cryptvol.db") == ["/k"]
