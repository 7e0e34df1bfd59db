"""The embedded state store: one SQLite file in WAL mode.

Deleted content is overwritten with zeros (`secure_delete`), and `forget_history` checkpoints
the WAL into the file and truncates it, so neither holds a shredded key afterwards.

One global revision counter lives in the `meta` table; a write transaction bumps it once and
stamps every key it writes with the new value, so revisions behave as etcd's do. Writes run
under `BEGIN IMMEDIATE`, which takes SQLite's write lock before the compares are read, so a
compare-and-swap from another thread or another process can never slip in between.

Group commit: a write waits in a queue; the first writer to find nobody committing commits
every write queued by then in one SQLite transaction, each with its own compares and its own
revision, in queue order, and one fsync (`synchronous = FULL`) makes them all durable before
any of their callers returns. So N concurrent RPCs cost one fsync, not N, and nothing is
acknowledged before it is on disk. `forget_history` requests queue the same way, and a
transaction may carry one (`txn_then_forget`: a shred's last write and the checkpoint after
it cost its caller one wait, not two). One WAL checkpoint serves every request pending when
it runs, and it runs once nothing else is queued, or after a request has waited out
`_FORGET_DEFERRALS` more commits: a checkpoint truncates the WAL, which also makes the next
commits dearer, so under load many deletes share one instead of one per commit. Nobody waiting
for a checkpoint returns before it ran.
Reads use a small pool of connections of their own: in WAL mode a read never waits for a
writer, and sees every write committed before it began.

Keys put with a time-to-live (replica reports) carry an expiry; an expired key reads as
absent everywhere and is swept by the next write.
"""

from __future__ import annotations

import copy
import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from cryptvol.errors import Internal, InvalidArgument, NotFound, Unavailable
from cryptvol.store.base import Compare, Delete, Entry, Put, prefix_end

DB_FILE = "cryptvol.db"  # its name in a state dir
_BUSY_TIMEOUT_MS = 30_000
_IN_CHUNK = 500  # keys per `IN (...)` query, well under SQLite's bound-parameter limit
_FORGET_DEFERRALS = 3  # commits a forget_history request may wait behind while writes queue

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


@dataclass(eq=False)
class _Write:
    """One caller's transaction in the queue; with `forget`, its caller waits for a
    checkpoint after its commit too (a forget_history alone has nothing to commit)."""

    compares: Sequence[Compare] = ()
    ops: Sequence[Put | Delete] = ()
    ttl: float | None = None
    forget: bool = False
    committed: bool = False  # its transaction has been applied or refused
    deferred: int = 0  # commits its checkpoint has waited behind
    done: bool = False
    applied: bool = False
    revision: int = 0  # what its writes carry, once applied
    error: BaseException | None = None
    # Held until a leader has committed this write or handed it the lead: one wake-up per
    # waiter, where a shared condition would wake every waiter for every batch.
    wake: threading.Lock = field(default_factory=threading.Lock)


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
        self._readonly = readonly
        # `_db` is the writing connection: only the commit leader, migrations, checkpoints
        # and backups use it, each holding `_write_lock`.
        self._write_lock = threading.Lock()
        self._queue: list[_Write] = []
        self._queue_lock = threading.Lock()
        self._leading = False
        self._readers: list[sqlite3.Connection] = []  # idle read connections
        self._closed = False
        if readonly and not self.path.is_file():
            raise NotFound(
                f"no state store at {self.path}: is the state dir right? (a driver makes the"
                " store at its first start)"
            )
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _make_private(self.path)
            self._db = self._connect()
        except PermissionError:
            raise
        except (OSError, sqlite3.Error) as exc:
            _raise_if_denied(self.path, readonly)
            raise Unavailable(f"cannot open the state database {self.path}: {exc}") from None
        try:
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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            f"file:{quote(str(self.path))}?mode=ro" if self._readonly else str(self.path),
            uri=self._readonly,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE below
            check_same_thread=False,  # used by one thread at a time: see _write_lock, _read
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """An idle read connection for the caller's thread alone, returned afterwards."""
        try:
            db = self._readers.pop()  # atomic under the GIL: no lock needed
        except IndexError:
            if self._closed:
                raise Unavailable(f"the state database {self.path} is closed") from None
            db = self._guard(self._connect)
        try:
            yield db
        finally:
            if self._closed:
                db.close()
            else:
                self._readers.append(db)

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write_lock:
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
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchall()[0][0])

    # -- reads --------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._read() as db:
            # fetchall: a statement left unfinished would hold its read snapshot open.
            rows = self._guard(
                lambda: db.execute(
                    "SELECT key, value, revision FROM kv"
                    " WHERE key = ? AND (expires IS NULL OR expires > ?)",
                    (key, self._clock()),
                ).fetchall()
            )
        return Entry(rows[0][0], bytes(rows[0][1]), int(rows[0][2])) if rows else None

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
        with self._read() as db:
            rows = self._guard(lambda: db.execute(sql, args).fetchall())
        return [Entry(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def count(self, prefix: str) -> int:
        end = prefix_end(prefix)
        with self._read() as db:
            rows = self._guard(
                lambda: db.execute(
                    "SELECT COUNT(*) FROM kv WHERE key >= ? AND (? = '' OR key < ?)"
                    " AND (expires IS NULL OR expires > ?)",
                    (prefix, end, end, self._clock()),
                ).fetchall()
            )
        return int(rows[0][0])

    def revision(self) -> int:
        """The store's current revision: the revision of its latest write."""
        with self._read() as db:
            rows = self._guard(
                lambda: db.execute("SELECT value FROM meta WHERE name='revision'").fetchall()
            )
        return int(rows[0][0])

    # -- writes -------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        return self._write(compares, ops, ttl=None) is not None

    def txn_at(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        return self._write(compares, ops, ttl=None)

    def txn_then_forget(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        """`txn`, then `forget_history`, in one trip through the queue: the checkpoint runs
        after the batch holding this transaction committed, before its caller returns."""
        return self._write(compares, ops, ttl=None, forget=True) is not None

    def put_lease(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive time-to-live")
        self._write((), (Put(key, value),), ttl=ttl)

    def end_lease(self, key: str) -> None:
        self._write((), (Delete(key),), ttl=None)

    def _write(
        self, compares: Sequence[Compare], ops: Sequence[Put | Delete], *, ttl: float | None,
        forget: bool = False,
    ) -> int | None:
        """The revision the transaction's writes carry, or None when a compare failed."""
        if len({op.key for op in ops}) != len(ops):
            raise InvalidArgument("a transaction may change each key at most once")  # as etcd
        write = _Write(compares, ops, ttl, forget=forget)
        return write.revision if self._queued(write) else None

    def _queued(self, write: _Write) -> bool:
        """Queue `write` and wait until a commit has applied (or refused) it durably. A
        writer that finds nobody committing leads: it commits the whole queue, then hands
        the lead to the first write queued meanwhile. A write whose checkpoint was deferred
        is queued again, at the front, and waits like any other."""
        write.wake.acquire()
        with self._queue_lock:
            self._queue.append(write)
            lead = not self._leading
            self._leading = True
        if not lead:
            write.wake.acquire()  # released once done, or to hand over the lead
        while not write.done:
            try:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                # Only the leader takes batches, so its own write is in this one.
                with self._write_lock:
                    self._commit(batch)
            finally:
                with self._queue_lock:
                    if self._queue:
                        self._queue[0].wake.release()  # not done: it leads next
                    else:
                        self._leading = False
            if not write.done:
                write.wake.acquire()  # deferred: released once done, or to lead again
        if write.error is not None:
            # A copy: one batch's failure is raised in every waiting thread at once.
            raise copy.copy(write.error)
        return write.applied

    def _commit(self, batch: list[_Write]) -> None:
        """Apply every transaction of `batch` not yet committed in order in one SQLite
        transaction (one fsync); then run one checkpoint for every write that asks for one,
        or defer them all (see the module's docstring). Mark each write done but the
        deferred ones, and wake its caller."""
        txns = [w for w in batch if not w.committed]
        if txns:
            try:
                self._guard(lambda: self._apply(txns))
            except BaseException as exc:
                for w in txns:
                    w.applied, w.error = False, exc
            for w in txns:
                w.committed = True
        forgets = [w for w in batch if w.forget and w.error is None]
        deferred: list[_Write] = []
        if forgets:
            with self._queue_lock:
                if self._queue and max(w.deferred for w in forgets) < _FORGET_DEFERRALS:
                    # The next leader takes them with what is queued now.
                    deferred, self._queue = forgets, forgets + self._queue
            if deferred:
                for w in deferred:
                    w.deferred += 1
            else:
                try:
                    self._guard(lambda: self._checkpoint(forgets))
                except BaseException as exc:
                    for w in forgets:
                        w.error = exc  # a transaction committed before stays applied
        for w in batch:
            if w not in deferred:
                w.done = True
                w.wake.release()

    def _apply(self, txns: list[_Write]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = self._clock()
            db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
            start = rev = int(
                db.execute("SELECT value FROM meta WHERE name='revision'").fetchall()[0][0]
            )
            for w in txns:
                w.applied = self._compares_hold(w.compares)
                w.revision = rev
                if not (w.applied and w.ops):
                    continue
                rev += 1  # each transaction its own revision, as if committed alone
                w.revision = rev
                expires = now + w.ttl if w.ttl is not None else None
                puts = [op for op in w.ops if isinstance(op, Put)]
                deletes = [op.key for op in w.ops if isinstance(op, Delete)]
                # One statement per chunk, not one per row: a row-by-row executemany hands
                # the GIL back and forth per row, and waits for it each time another thread
                # computes (reencrypt's next batch), which made commits ten times slower.
                for i in range(0, len(puts), _IN_CHUNK):
                    chunk = puts[i : i + _IN_CHUNK]
                    db.execute(
                        "INSERT INTO kv (key, value, revision, expires) SELECT * FROM (VALUES"
                        + ",".join(["(?,?,?,?)"] * len(chunk))
                        + ") WHERE true ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                        " revision = excluded.revision, expires = excluded.expires",
                        [x for op in chunk for x in (op.key, op.value, rev, expires)],
                    )
                for i in range(0, len(deletes), _IN_CHUNK):
                    chunk_keys = deletes[i : i + _IN_CHUNK]
                    db.execute(
                        f"DELETE FROM kv WHERE key IN ({','.join('?' * len(chunk_keys))})",
                        chunk_keys,
                    )
            if rev != start:
                db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _compares_hold(self, compares: Sequence[Compare]) -> bool:
        want: dict[str, int] = {}
        for cmp in compares:
            if want.setdefault(cmp.key, cmp.revision) != cmp.revision:
                return False  # two compares on one key that cannot both hold
        # Counted in SQL, not fetched: reencrypt's batches carry a thousand compares, and
        # building a row per key in Python cost more than the lookups.
        present = [kv for kv in want.items() if kv[1]]
        absent = [k for k, rev in want.items() if not rev]
        for i in range(0, len(present), _IN_CHUNK):
            chunk = present[i : i + _IN_CHUNK]
            pairs = ",".join(["(?,?)"] * len(chunk))
            found = self._db.execute(
                f"SELECT COUNT(*) FROM kv JOIN (VALUES {pairs}) AS want"
                " ON kv.key = want.column1 AND kv.revision = want.column2",
                [x for pair in chunk for x in pair],
            ).fetchall()[0][0]
            if found != len(chunk):
                return False
        for i in range(0, len(absent), _IN_CHUNK):
            missing = absent[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(missing))
            found = self._db.execute(
                f"SELECT COUNT(*) FROM kv WHERE key IN ({marks})", missing
            ).fetchall()[0][0]
            if found:
                return False
        return True

    def forget_history(self) -> None:
        # Queued like a write: it runs after every write its caller made has committed,
        # and concurrent callers (one DeleteVolume each) share one checkpoint.
        self._queued(_Write(forget=True, committed=True))

    def _checkpoint(self, _requests: list[_Write]) -> None:
        # The WAL still holds the pages as they were before the delete; the checkpoint
        # copies the current ones (zeroed where content was deleted) into the file, then
        # truncates the WAL once no connection reads from it. Reads here last well under a
        # millisecond, but SQLite's busy handler sleeps a millisecond and more per try, so
        # the checkpoint asks without it and tries again itself after a short pause, until
        # the busy timeout. (Another connection's checkpoint in progress also makes it give
        # up at once.)
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        pause = 0.0001
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                busy, _, _ = self._guard(
                    lambda: self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
                )
                if not busy:
                    return
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"the state database {self.path} stayed busy: its WAL could not be"
                        " checkpointed to forget deleted keys; retry"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

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
        with self._write_lock:
            self._guard(lambda: self._db.backup(target))

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            while self._readers:
                self._readers.pop().close()
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
