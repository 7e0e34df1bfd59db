"""The SQLite store: revisions, compare-and-swap, leases, migrations, threads and processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cryptvol.errors import Internal
from cryptvol.store.base import Compare, Delete, Put, prefix_end
from cryptvol.store.sqlite import SCHEMA_VERSION, SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "state.db")
    yield s  # type: ignore[misc]
    s.close()


def test_a_put_stamps_the_key_with_a_new_global_revision(store: SqliteStore) -> None:
    assert store.txn([], [Put("/a", b"1")])
    assert store.txn([], [Put("/b", b"2"), Put("/c", b"3")])
    a, b, c = store.get("/a"), store.get("/b"), store.get("/c")
    assert a and b and c
    assert a.revision == 1 and b.revision == c.revision == 2
    assert store.revision() == 2


def test_compare_and_swap_applies_only_when_every_compare_holds(store: SqliteStore) -> None:
    assert store.txn([Compare("/k", 0)], [Put("/k", b"first")])
    assert not store.txn([Compare("/k", 0)], [Put("/k", b"second")])
    entry = store.get("/k")
    assert entry and entry.value == b"first"
    assert not store.txn([Compare("/k", entry.revision), Compare("/other", 7)], [Delete("/k")])
    assert store.txn([Compare("/k", entry.revision)], [Delete("/k")])
    assert store.get("/k") is None


def test_range_is_ordered_bounded_by_prefix_and_pages(store: SqliteStore) -> None:
    for key in ["/v/b", "/v/a", "/v/c", "/w/a", "/v"]:
        store.txn([], [Put(key, key.encode())])
    assert [e.key for e in store.range("/v/")] == ["/v/a", "/v/b", "/v/c"]
    assert [e.key for e in store.range("/v/", limit=2)] == ["/v/a", "/v/b"]
    assert [e.key for e in store.range("/v/", start_after="/v/b")] == ["/v/c"]
    assert store.count("/v/") == 3
    assert store.count("/") == 5
    assert prefix_end("/v/") == "/v0"


def test_a_leased_key_disappears_after_its_ttl_unless_put_again(tmp_path: Path) -> None:
    now = [1000.0]
    store = SqliteStore(tmp_path / "s.db", clock=lambda: now[0])
    store.put_lease("/r/one", b"x", ttl=10)
    now[0] += 5
    assert store.get("/r/one") is not None
    store.put_lease("/r/one", b"y", ttl=10)
    now[0] += 8
    assert [e.value for e in store.range("/r/")] == [b"y"]
    now[0] += 3
    assert store.get("/r/one") is None and store.count("/r/") == 0
    assert store.txn([Compare("/r/one", 0)], [Put("/r/one", b"z")])


def test_the_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(Internal, match="newer than this cryptvol knows"):
        SqliteStore(path)


def test_reopening_keeps_data_and_revisions(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    s.txn([], [Put("/x", b"1")])
    s.close()
    s = SqliteStore(path)
    assert s.get("/x") == s.range("/x")[0]
    assert s.txn([], [Put("/y", b"2")]) and s.revision() == 2


def test_threads_incrementing_one_counter_by_cas_lose_no_update(store: SqliteStore) -> None:
    store.txn([], [Put("/n", b"0")])

    def bump(times: int) -> None:
        done = 0
        while done < times:
            e = store.get("/n")
            assert e
            if store.txn([Compare("/n", e.revision)], [Put("/n", str(int(e.value) + 1).encode())]):
                done += 1

    threads = [threading.Thread(target=bump, args=(50,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get("/n")
    assert final and final.value == b"400"


_BUMPER = """
import sys
from pathlib import Path
from cryptvol.store.base import Compare, Put
from cryptvol.store.sqlite import SqliteStore
s = SqliteStore(Path(sys.argv[1]))
done = 0
while done < 100:
    e = s.get("/n")
    if s.txn([Compare("/n", e.revision)], [Put("/n", str(int(e.value) + 1).encode())]):
        done += 1
"""


def test_processes_sharing_the_file_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    s.txn([], [Put("/n", b"0")])
    procs = [subprocess.Popen([sys.executable, "-c", _BUMPER, str(path)]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    final = s.get("/n")
    assert final and final.value == b"300"


def test_concurrent_writes_share_one_commit_each_with_its_own_revision(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: writes queued while a commit runs are committed together (one fsync),
    in queue order, each stamped with its own revision and judged by its own compares."""
    batches: list[int] = []
    first_running, release = threading.Event(), threading.Event()
    apply = store._apply

    def held_apply(txns: list) -> None:  # type: ignore[type-arg]
        batches.append(len(txns))
        if len(batches) == 1:
            first_running.set()
            release.wait(30)
        apply(txns)

    monkeypatch.setattr(store, "_apply", held_apply)
    results: dict[str, bool] = {}

    def put(key: str, name: str) -> None:
        results[name] = store.txn([Compare(key, 0)], [Put(key, name.encode())])

    leader = threading.Thread(target=put, args=("/first", "first"))
    leader.start()
    assert first_running.wait(30)
    # Queued behind the running commit, one at a time so the queue's order is known: two
    # creates of one key (the first wins, the second's compare then fails) and five others.
    followers = [threading.Thread(target=put, args=("/k", name)) for name in ("k1", "k2")]
    followers += [threading.Thread(target=put, args=(f"/n{i}", f"n{i}")) for i in range(5)]
    for queued, t in enumerate(followers, start=1):
        t.start()
        while len(store._queue) < queued:
            time.sleep(0.001)
    release.set()
    for t in [leader, *followers]:
        t.join(30)
    assert batches == [1, 7]
    assert results == {"first": True, "k1": True, "k2": False,
                       **{f"n{i}": True for i in range(5)}}
    k = store.get("/k")
    assert k is not None and k.value == b"k1" and k.revision == 2
    # One revision per transaction, in queue order, though all seven shared one commit.
    assert [e.revision for i in range(5) if (e := store.get(f"/n{i}"))] == [3, 4, 5, 6, 7]
    assert store.revision() == 7


def test_concurrent_forget_history_requests_share_one_checkpoint(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints: list[int] = []
    first_running, release = threading.Event(), threading.Event()
    checkpoint = store._checkpoint

    def held(requests: list) -> None:  # type: ignore[type-arg]
        checkpoints.append(len(requests))
        if len(checkpoints) == 1:
            first_running.set()
            release.wait(30)
        checkpoint(requests)

    monkeypatch.setattr(store, "_checkpoint", held)
    threads = [threading.Thread(target=store.forget_history) for _ in range(6)]
    threads[0].start()
    assert first_running.wait(30)
    for t in threads[1:]:
        t.start()
    while len(store._queue) < 5:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(30)
    assert checkpoints == [1, 5]


def test_a_transaction_that_forgets_returns_once_what_it_deleted_left_the_files(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = b"wrapped-key-bytes-" + bytes(range(32))
    assert store.txn([], [Put("/deks/v", secret), Put("/records/v", b"r")])
    files = store.path.parent.glob(store.path.name + "*")
    assert any(secret in p.read_bytes() for p in files)
    checkpoints: list[int] = []
    checkpoint = store._checkpoint

    def counted(requests: list) -> None:  # type: ignore[type-arg]
        checkpoints.append(len(requests))
        checkpoint(requests)

    monkeypatch.setattr(store, "_checkpoint", counted)
    assert store.txn([], [Delete("/deks/v")])  # a shred's first write: no checkpoint yet
    assert checkpoints == []
    assert store.txn_then_forget([Compare("/records/v", 1)], [Delete("/records/v")])
    assert checkpoints == [1]
    assert store.get("/records/v") is None
    files = store.path.parent.glob(store.path.name + "*")
    assert not any(secret in p.read_bytes() for p in files)


def test_a_checkpoint_waits_while_writes_queue_but_its_callers_return_only_after_it(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load many shreds share one checkpoint: it is deferred while other writes are
    queued (at most a few commits), and nobody who asked for it returns before it ran."""
    events: list[str] = []
    hold = [threading.Event(), threading.Event()]
    held = [threading.Event(), threading.Event()]
    apply, checkpoint = store._apply, store._checkpoint

    def held_apply(txns: list) -> None:  # type: ignore[type-arg]
        events.append(f"commit {len(txns)}")
        commits = sum(e.startswith("commit") for e in events)
        if commits <= 2:
            held[commits - 1].set()
            hold[commits - 1].wait(30)
        apply(txns)

    def counted(requests: list) -> None:  # type: ignore[type-arg]
        events.append(f"checkpoint {len(requests)}")
        checkpoint(requests)

    store.txn([], [Put("/deks/a", b"key-a"), Put("/deks/b", b"key-b")])
    monkeypatch.setattr(store, "_apply", held_apply)
    monkeypatch.setattr(store, "_checkpoint", counted)

    def shred(name: str) -> None:
        store.txn_then_forget([], [Delete(f"/deks/{name}")])
        events.append(f"returned {name}")

    def write(key: str) -> None:
        store.txn([], [Put(key, b"v")])

    first = threading.Thread(target=shred, args=("a",))  # leads; its commit is held
    first.start()
    assert held[0].wait(30)
    second = threading.Thread(target=shred, args=("b",))
    second.start()
    while len(store._queue) < 1:
        time.sleep(0.001)
    hold[0].set()  # a's commit ends with b queued: a's checkpoint is deferred
    assert held[1].wait(30)  # b's commit (a rides along, committed already) is held
    late = threading.Thread(target=write, args=("/late",))
    late.start()
    while len(store._queue) < 1:
        time.sleep(0.001)
    hold[1].set()  # deferred again behind /late; then nothing queued: one checkpoint
    for t in (first, second, late):
        t.join(30)
    assert events[:4] == ["commit 1", "commit 1", "commit 1", "checkpoint 2"]
    assert sorted(events[4:]) == ["returned a", "returned b"]
    held_bytes = b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))
    assert b"key-a" not in held_bytes and b"key-b" not in held_bytes
