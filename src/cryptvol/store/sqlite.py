"""The embedded state store: one SQLite file in WAL mode.

Deleted content is overwritten with zeros (`secure_delete`), and `forget_history` checkpoints
the WAL into the file and truncates it, so neither holds a shredded key afterwards.

One global revision counter lives in the `meta` table; a write transaction bumps it once and
stamps every key it writes with the new value, so revisions behave as etcd's do. Writes run
under `BEGIN IMMEDIATE`, which takes SQLite's write lock before the compares are read, so a
compare-and-swap from another thread or another process can never slip in between.

Keys put with a time-to-live (replica reports) carry an expiry; an expired key reads as
absent everywhere and is swept by the next write.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from cryptvol.errors import Internal, InvalidArgument, NotFound, Unavailable
from cryptvol.store.base import Compare, Delete, Entry, Put, prefix_end

DB_FILE = "cryptvol.db"  # its name in a state dir
_BUSY_TIMEOUT_MS = 30_000
_IN_CHUNK = 500  # keys per `IN (...)` query, well under SQLite's bound-parameter limit

_T = TypeVar("_T")
_Migration = Callable[[sqlite3.Connection], None]


def _v1_kv(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE kv ("
        " key TEXT PRIMARY KEY,"
        " value BLOB NOT NULL,"
        " revision INTEGER NOT NULL,"
        " expires REAL"  # wall-clock expiry for keys put with a TTL; NULL: never
        ") WITHOUT ROWID"
    )
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta (name, value) VALUES ('revision', 0)")


def _v2_expiry_index(db: sqlite3.Connection) -> None:
    # Every write sweeps expired leases; without this index that sweep reads the whole table.
    db.execute("CREATE INDEX kv_expires ON kv (expires) WHERE expires IS NOT NULL")


# Applied in order at open; a migration's index + 1 is the schema version it produces.
# Append only: never edit or reorder a released migration.
MIGRATIONS: tuple[_Migration, ...] = (_v1_kv, _v2_expiry_index)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStore:
    """`Store` on one SQLite file; safe to share between threads and between processes."""

    # Bulk writers (reencrypt) overlap one commit with the next batch's work, no more: SQLite
    # has one writer at a time.
    concurrent_writers = 2
    max_txn_ops = 1000

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, readonly: bool = False
    ) -> None:
        """Open (and with `readonly` False, create or migrate) the store at `path`.

        `readonly` is for commands that only look: they never create the file or its folder,
        never migrate, and say NotFound when there is no store at `path`.
        """
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        if readonly and not self.path.is_file():
            raise NotFound(
                f"no state store at {self.path}: is the state dir right? (a driver makes the"
                " store at its first start)"
            )
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _make_private(self.path)
            self._db = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=ro" if readonly else str(self.path),
                uri=readonly,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE below
                check_same_thread=False,  # one connection, serialised by self._lock
                timeout=_BUSY_TIMEOUT_MS / 1000,
            )
        except PermissionError:
            raise
        except (OSError, sqlite3.Error) as exc:
            _raise_if_denied(self.path, readonly)
            raise Unavailable(f"cannot open the state database {self.path}: {exc}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if readonly:
                self._check_readable()
            else:
                self._db.execute("PRAGMA journal_mode = WAL")
                # A wrapped DEK that is not durable when the volume it formats is, loses data.
                self._db.execute("PRAGMA synchronous = FULL")
                # A shredded DEK or retired KEK must not linger in free space of the file.
                self._db.execute("PRAGMA secure_delete = ON")
                self._migrate()
        except BaseException as exc:
            self._db.close()
            if not isinstance(exc, sqlite3.Error):
                raise
            _raise_if_denied(self.path, readonly)
            raise Internal(f"cannot prepare the state database {self.path}: {exc}") from None

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            if int(self._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
                return  # the common case: no write lock, no fsync at open
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise Internal(
                        f"the state database {self.path} has schema version {version}, newer"
                        f" than this cryptvol knows ({SCHEMA_VERSION}); run a newer cryptvol"
                    )
                for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                    migration(self._db)
                    self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _check_readable(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            raise NotFound(f"{self.path} holds no cryptvol state (an empty or foreign file)")
        if version > SCHEMA_VERSION:
            raise Internal(
                f"the state database {self.path} has schema version {version}, newer"
                f" than this cryptvol knows ({SCHEMA_VERSION}); run a newer cryptvol"
            )

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- reads --------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._guard(
                lambda: self._db.execute(
                    "SELECT key, value, revision FROM kv"
                    " WHERE key = ? AND (expires IS NULL OR expires > ?)",
                    (key, self._clock()),
                ).fetchone()
            )
        return Entry(row[0], bytes(row[1]), int(row[2])) if row else None

    def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0, max_revision: int = 0
    ) -> list[Entry]:
        low, low_op = (start_after, ">") if start_after >= prefix else (prefix, ">=")
        sql = (
            f"SELECT key, value, revision FROM kv WHERE key {low_op} ?"
            " AND (? = '' OR key < ?) AND (expires IS NULL OR expires > ?)"
            " AND (? = 0 OR revision <= ?) ORDER BY key"
        )
        end = prefix_end(prefix)
        args: tuple[object, ...] = (low, end, end, self._clock(), max_revision, max_revision)
        if limit > 0:
            sql += " LIMIT ?"
            args += (limit,)
        with self._lock:
            rows = self._guard(lambda: self._db.execute(sql, args).fetchall())
        return [Entry(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def count(self, prefix: str) -> int:
        end = prefix_end(prefix)
        with self._lock:
            row = self._guard(
                lambda: self._db.execute(
                    "SELECT COUNT(*) FROM kv WHERE key >= ? AND (? = '' OR key < ?)"
                    " AND (expires IS NULL OR expires > ?)",
                    (prefix, end, end, self._clock()),
                ).fetchone()
            )
        return int(row[0])

    def revision(self) -> int:
        """The store's current revision: the revision of its latest write."""
        with self._lock:
            row = self._guard(
                lambda: self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            )
        return int(row[0])

    # -- writes -------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        return self._write(compares, ops, ttl=None)

    def put_lease(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive time-to-live")
        self._write((), (Put(key, value),), ttl=ttl)

    def end_lease(self, key: str) -> None:
        self._write((), (Delete(key),), ttl=None)

    def _write(
        self, compares: Sequence[Compare], ops: Sequence[Put | Delete], *, ttl: float | None
    ) -> bool:
        if len({op.key for op in ops}) != len(ops):
            raise InvalidArgument("a transaction may change each key at most once")  # as etcd
        with self._lock:
            return self._guard(lambda: self._write_locked(compares, ops, ttl))

    def _write_locked(
        self, compares: Sequence[Compare], ops: Sequence[Put | Delete], ttl: float | None
    ) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()
            db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
            if not self._compares_hold(compares):
                db.execute("ROLLBACK")
                return False
            if ops:
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
                rev = int(db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])
                expires = now + ttl if ttl is not None else None
                db.executemany(
                    "INSERT INTO kv (key, value, revision, expires) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                    " revision = excluded.revision, expires = excluded.expires",
                    [(op.key, op.value, rev, expires) for op in ops if isinstance(op, Put)],
                )
                db.executemany(
                    "DELETE FROM kv WHERE key = ?",
                    [(op.key,) for op in ops if isinstance(op, Delete)],
                )
            db.execute("COMMIT")
            return True
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _compares_hold(self, compares: Sequence[Compare]) -> bool:
        want: dict[str, int] = {}
        for cmp in compares:
            if want.setdefault(cmp.key, cmp.revision) != cmp.revision:
                return False  # two compares on one key that cannot both hold
        keys = list(want)
        have: dict[str, int] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, revision FROM kv WHERE key IN ({marks})", chunk)
            have.update((str(k), int(r)) for k, r in rows)
        return all(have.get(k, 0) == rev for k, rev in want.items())

    def forget_history(self) -> None:
        # The WAL still holds the pages as they were before the delete; the checkpoint
        # copies the current ones (zeroed where content was deleted) into the file, then
        # truncates the WAL, waiting (busy timeout) for other connections' reads to end.
        # Another connection's checkpoint in progress makes it give up at once, without
        # the busy handler: so it is tried again until the busy timeout.
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            with self._lock:
                busy, _, _ = self._guard(
                    lambda: self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                )
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"the state database {self.path} stayed busy: its WAL could not be"
                    " checkpointed to forget deleted keys; retry"
                )
            time.sleep(0.02)

    def _guard(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full, file gone: the store is not usable now.
            raise Unavailable(f"the state database {self.path} is not usable: {exc}") from None
        except sqlite3.Error as exc:
            raise Internal(f"the state database {self.path} failed: {exc}") from None

    def copy_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole database into `target` with SQLite's online backup: a consistent
        snapshot, even while other connections write."""
        with self._lock:
            self._guard(lambda: self._db.backup(target))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _make_private(path: Path) -> None:
    """The database and its -wal and -shm hold wrapped DEKs: owner-only. SQLite makes the
    -wal and -shm with the database's mode, so a database made 0600 keeps them 0600; files
    an older cryptvol made with the umask's mode are tightened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        try:
            if stat.S_IMODE(side.lstat().st_mode) & 0o077 and not side.is_symlink():
                side.chmod(0o600)
        except FileNotFoundError:
            pass


def _raise_if_denied(path: Path, readonly: bool) -> None:
    """SQLite says "unable to open database file" whatever the cause; name the path the
    caller may not use, when that is the cause."""
    folder = path.parent
    needs = [(path, os.R_OK if readonly else os.R_OK | os.W_OK)] if path.exists() else []
    # Without a -shm beside it, even a reader of a WAL database must create one.
    if not readonly or not path.with_name(path.name + "-shm").exists():
        needs.insert(0, (folder, os.W_OK | os.X_OK))
    for where, mode in needs:
        if where.exists() and not os.access(where, mode):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(where))
