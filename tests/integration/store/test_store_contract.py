"""The `Store` contract, checked on both implementations: SQLite and a real etcd member."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptvol.errors import Unavailable
from cryptvol.store.base import Compare, Delete, Put, Store
from cryptvol.store.etcd import EtcdStore
from cryptvol.store.sqlite import SqliteStore
from support.etcd_cluster import EtcdCluster
from support.tls_certs import make_tls


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "state.db")
        yield s
        s.close()
        return
    cluster = EtcdCluster(tmp_path / "etcd").start()
    s = EtcdStore(cluster.endpoints)
    try:
        yield s
    finally:
        s.close()
        cluster.stop()


def test_get_of_an_absent_key_is_none(store: Store) -> None:
    assert store.get("/nothing") is None


def test_put_then_get_returns_value_and_a_positive_revision(store: Store) -> None:
    assert store.txn([], [Put("/a", b"\x00\xffbinary")])
    entry = store.get("/a")
    assert entry is not None and entry.value == b"\x00\xffbinary" and entry.revision > 0


def test_one_transaction_stamps_all_its_keys_with_one_newer_revision(store: Store) -> None:
    store.txn([], [Put("/a", b"1")])
    store.txn([], [Put("/b", b"2"), Put("/c", b"3")])
    a, b, c = (store.get(k) for k in ("/a", "/b", "/c"))
    assert a and b and c and b.revision == c.revision > a.revision


def test_compare_on_zero_means_absent(store: Store) -> None:
    assert store.txn([Compare("/k", 0)], [Put("/k", b"1")])
    assert not store.txn([Compare("/k", 0)], [Put("/k", b"2")])
    assert store.get("/k").value == b"1"  # type: ignore[union-attr]


def test_compare_and_swap_on_the_revision(store: Store) -> None:
    store.txn([], [Put("/k", b"1")])
    rev = store.get("/k").revision  # type: ignore[union-attr]
    assert store.txn([Compare("/k", rev)], [Put("/k", b"2")])
    assert not store.txn([Compare("/k", rev)], [Put("/k", b"3")])
    assert store.get("/k").value == b"2"  # type: ignore[union-attr]


def test_a_transaction_tells_the_revision_its_writes_carry_or_none_when_refused(
        store: Store) -> None:
    written = store.txn_at([Compare("/k", 0)], [Put("/k", b"1"), Put("/j", b"1")])
    k, j = store.get("/k"), store.get("/j")
    assert written and k and j and k.revision == j.revision == written
    # What a compare-and-swap of the record just written compares with, without a read.
    swapped = store.txn_at([Compare("/k", written)], [Put("/k", b"2")])
    assert swapped and swapped > written
    assert store.get("/k").revision == swapped  # type: ignore[union-attr]
    assert store.txn_at([Compare("/k", written)], [Put("/k", b"3")]) is None
    assert store.get("/k").value == b"2"  # type: ignore[union-attr]


def test_a_failed_compare_applies_none_of_the_ops(store: Store) -> None:
    store.txn([], [Put("/x", b"1")])
    assert not store.txn([Compare("/x", 0)], [Put("/y", b"1"), Delete("/x")])
    assert store.get("/y") is None and store.get("/x") is not None


def test_delete_removes_and_is_idempotent(store: Store) -> None:
    store.txn([], [Put("/d", b"1")])
    assert store.txn([], [Delete("/d")])
    assert store.txn([], [Delete("/d")])
    assert store.get("/d") is None
    assert store.txn([Compare("/d", 0)], [Put("/d", b"again")])


def test_range_orders_by_key_stays_in_the_prefix_and_pages(store: Store) -> None:
    keys = [f"/p/{i:04d}" for i in range(25)]
    store.txn([], [Put(k, k.encode()) for k in reversed(keys)])
    store.txn([], [Put("/p", b"x"), Put("/q/0", b"x"), Put("/o/9", b"x")])
    assert [e.key for e in store.range("/p/")] == keys
    assert [e.key for e in store.range("/p/", limit=10)] == keys[:10]
    assert [e.key for e in store.range("/p/", start_after=keys[9], limit=10)] == keys[10:20]
    assert [e.key for e in store.range("/p/", start_after=keys[-1])] == []
    assert store.count("/p/") == 25
    assert store.count("/none/") == 0


def test_range_pages_past_a_thousand_keys(store: Store) -> None:
    for start in range(0, 2100, 100):
        store.txn([], [Put(f"/big/{i:05d}", b"v") for i in range(start, start + 100)])
    entries = store.range("/big/")
    assert len(entries) == 2100 == store.count("/big/")
    assert entries[0].key == "/big/00000" and entries[-1].key == "/big/02099"


def test_a_leased_key_is_visible_then_gone_after_its_ttl(store: Store) -> None:
    store.put_lease("/lease/a", b"alive", ttl=1)
    assert store.get("/lease/a").value == b"alive"  # type: ignore[union-attr]
    store.put_lease("/lease/a", b"again", ttl=30)
    assert [e.value for e in store.range("/lease/")] == [b"again"]
    store.put_lease("/lease/b", b"short", ttl=1)
    deadline = __import__("time").monotonic() + 10
    while store.get("/lease/b") is not None:
        assert __import__("time").monotonic() < deadline, "the lease never lapsed"
        __import__("time").sleep(0.2)
    assert store.get("/lease/a") is not None


def test_a_renewed_lease_lives_on_and_an_ended_one_is_gone_at_once(store: Store) -> None:
    store.put_lease("/lease/r", b"1", ttl=2)
    for value in (b"2", b"3", b"4"):
        __import__("time").sleep(0.8)
        store.put_lease("/lease/r", value, ttl=2)
    assert store.get("/lease/r").value == b"4"  # type: ignore[union-attr]
    store.end_lease("/lease/r")
    assert store.get("/lease/r") is None
    store.end_lease("/lease/r")  # again: nothing left to end
    store.put_lease("/lease/r", b"back", ttl=2)
    assert store.get("/lease/r").value == b"back"  # type: ignore[union-attr]


def test_concurrent_cas_increments_lose_nothing(store: Store) -> None:
    store.txn([], [Put("/n", b"0")])

    def bump(times: int) -> None:
        done = 0
        while done < times:
            e = store.get("/n")
            assert e is not None
            if store.txn([Compare("/n", e.revision)], [Put("/n", str(int(e.value) + 1).encode())]):
                done += 1

    threads = [threading.Thread(target=bump, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("/n").value == b"60"  # type: ignore[union-attr]


def test_range_with_max_revision_keeps_only_keys_written_up_to_it(store: Store) -> None:
    store.txn([], [Put("/m/a", b"1"), Put("/m/b", b"1")])
    upto = store.get("/m/b").revision  # type: ignore[union-attr]
    store.txn([], [Put("/m/b", b"2"), Put("/m/c", b"2")])
    assert [e.key for e in store.range("/m/", max_revision=upto)] == ["/m/a"]
    assert [e.key for e in store.range("/m/", max_revision=upto + 1)] == ["/m/a", "/m/b", "/m/c"]
    assert [e.key for e in store.range("/m/")] == ["/m/a", "/m/b", "/m/c"]


def test_etcd_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """As in RKE2: https members that ask every client for a certificate from their CA."""
    tls = make_tls(tmp_path / "tls")
    cluster = EtcdCluster(tmp_path / "etcd", tls=tls).start()
    try:
        good = EtcdStore(
            cluster.endpoints,
            ca_file=tls.ca,
            cert_file=tls.client_cert,
            key_file=tls.client_key,
        )
        assert good.txn([Compare("/tls", 0)], [Put("/tls", b"yes")])
        assert good.get("/tls").value == b"yes"  # type: ignore[union-attr]
        good.close()
        no_client_cert = EtcdStore(cluster.endpoints, ca_file=tls.ca, timeout=2)
        with pytest.raises(Unavailable, match=r"etcd cannot be reached: .* client certificate"):
            no_client_cert.get("/tls")
    finally:
        cluster.stop()


def test_a_transaction_as_large_as_the_store_allows_compares_and_writes_every_key(
    store: Store,
) -> None:
    """Reencrypt's batches: as many compares and puts as one transaction takes."""
    n = int(getattr(store, "max_txn_ops", 128)) - 1
    keys = [f"/big/{i:04d}" for i in range(n)]
    assert store.txn([Compare(k, 0) for k in keys], [Put(k, b"1") for k in keys])
    entries = store.range("/big/")
    assert len(entries) == n
    stale = [Compare(e.key, e.revision) for e in entries]
    stale[-1] = Compare(entries[-1].key, entries[-1].revision + 1)
    assert not store.txn(stale, [Put(e.key, b"2") for e in entries])
    assert {e.value for e in store.range("/big/")} == {b"1"}
    assert store.txn([Compare(e.key, e.revision) for e in entries], [Delete(k) for k in keys])
    assert store.range("/big/") == []
