"""Backup and restore of the embedded SQLite store, as whole-file copies.

`backup` copies a live store with SQLite's online backup API: a consistent snapshot even
while the driver writes, which a plain `cp` of the file and its WAL is not. `restore` puts
such a copy in place of a store that is missing, empty or damaged; never over one that holds
state unless asked, and never under a process that has it open.

Both make and check the copy in a local temporary folder, write it under a temporary name
beside the target, and rename it into place, so the target is never half written; copies are
0600, like the store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptvol.errors import (
    AlreadyExists,
    CryptvolError,
    FailedPrecondition,
    Internal,
    NotFound,
)
from cryptvol.store.sqlite import SqliteStore
from cryptvol.system.files import fsync_dir

_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite may keep beside a database


@dataclass(frozen=True)
class Copied:
    """What a copy holds: enough for the command to say what it wrote."""

    path: Path
    entries: int
    bytes: int


def backup(store_path: Path, target: Path, *, replace: bool = False) -> Copied:
    """Copy the store at `store_path` to `target`; refuse an existing `target` unless
    `replace`. The store is opened read-only: a wrong path creates nothing."""
    if (target.exists() or target.is_symlink()) and not replace:
        raise AlreadyExists(f"{target} exists; choose a new file, or add --force to replace it")
    store = SqliteStore(store_path, readonly=True)
    try:
        return _write_copy(store, target, replace=replace)
    finally:
        store.close()


def restore(backup_path: Path, store_path: Path, *, replace: bool = False) -> Copied:
    """Put the backup at `backup_path` in place of the store at `store_path`."""
    source = SqliteStore(backup_path, readonly=True)
    try:
        if store_path.exists():
            _check_replaceable(store_path, replace=replace)
        store_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A WAL left beside the old file would be replayed onto the restored one.
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                store_path.with_name(store_path.name + suffix).unlink()
        return _write_copy(source, store_path, replace=True)
    finally:
        source.close()


def _check_replaceable(store_path: Path, *, replace: bool) -> None:
    db = sqlite3.connect(store_path, isolation_level=None, timeout=0)
    try:
        # Exclusive locking mode takes the file from every other connection, WAL or not:
        # it fails while the driver (or any process) has the store open.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise FailedPrecondition(
                f"a process has the state store {store_path} open (a running driver?); "
                "stop it before restoring"
            ) from None
    except sqlite3.DatabaseError:
        pass  # damaged beyond opening: what a restore is for; judged below
    finally:
        db.close()
    if replace:
        return
    try:
        current = SqliteStore(store_path, readonly=True)
    except NotFound:
        return  # an empty file: nothing to lose
    except CryptvolError as exc:
        raise FailedPrecondition(
            f"the state store {store_path} cannot be read ({exc}); add --force to replace it "
            "with the backup"
        ) from None
    try:
        held = current.count("")
    finally:
        current.close()
    if held:
        raise FailedPrecondition(
            f"the state store {store_path} holds {held} entries; restoring replaces them all: "
            "add --force if that is what you want"
        )


def _write_copy(store: SqliteStore, target: Path, *, replace: bool) -> Copied:
    if not target.parent.is_dir():
        raise NotFound(f"folder {target.parent} does not exist")
    # SQLite writes the copy in a local temporary folder: the target's may be a network or
    # 9p share where its locking does not work. The bytes then travel by plain file I/O.
    with tempfile.TemporaryDirectory(prefix="cryptvol-copy-") as tmp:
        local = Path(tmp) / "copy.db"
        entries = _sqlite_copy(store, local)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent)  # 0600
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, local.open("rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            if replace:
                os.replace(staged, target)
            else:
                try:
                    os.link(staged, target)  # unlike a rename, never replaces a newcomer
                except FileExistsError:
                    raise AlreadyExists(f"{target} exists; choose a new file") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
    fsync_dir(target.parent)
    return Copied(target, entries, target.stat().st_size)


def _sqlite_copy(store: SqliteStore, local: Path) -> int:
    """Copy `store` into the new file `local`; return how many entries it holds."""
    try:
        copy = sqlite3.connect(local, isolation_level=None)
        try:
            store.copy_to(copy)
            # A backup is one self-contained file that even a reader who may not write
            # beside it can open; the driver turns WAL back on when it opens a restored one.
            copy.execute("PRAGMA journal_mode = DELETE")
            verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            entries = int(copy.execute("SELECT COUNT(*) FROM kv").fetchone()[0])
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise Internal(f"copying {store.path} failed: {exc}") from None
    if verdict != "ok":
        raise Internal(f"the copy of {store.path} failed SQLite's check: {verdict}")
    return entries

