"""The key manager with the embedded store and the local KEK file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.keyset import KEYSET_KEY, dek_key
from cryptvol.keys.manager import KeyManager, open_local
from cryptvol.store.base import Put
from cryptvol.store.sqlite import SqliteStore


def test_first_start_makes_a_kek_and_is_ready(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    assert km.ready() and km.not_ready_reason() == ""
    assert (tmp_path / "kek.json").exists() and (tmp_path / "cryptvol.db").exists()
    record = json.loads(store.get(KEYSET_KEY).value)  # type: ignore[union-attr]
    assert record["stage"] == "start" and len(record["keks"]) == 1
    store.close()


def test_create_get_delete_round_trip(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    dek = km.create_dek("pvc-1")
    assert len(dek) == 32
    assert km.get_dek("pvc-1") == dek
    km.delete_dek("pvc-1")
    km.delete_dek("pvc-1")
    with pytest.raises(NotFound, match="pvc-1"):
        km.get_dek("pvc-1")
    store.close()


def test_create_is_idempotent_and_never_replaces_a_dek(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    first = km.create_dek("pvc-1")
    raw = store.get(dek_key("pvc-1"))
    assert km.create_dek("pvc-1") == first
    assert store.get(dek_key("pvc-1")) == raw
    store.close()


def test_keys_survive_a_restart(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    dek = km.create_dek("pvc-1")
    store.close()
    store, km = open_local(tmp_path)
    assert km.get_dek("pvc-1") == dek
    assert len(json.loads(store.get(KEYSET_KEY).value)["keks"]) == 1  # type: ignore[union-attr]
    store.close()


def test_a_missing_kek_file_with_existing_deks_is_refused_at_start(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    km.create_dek("pvc-1")
    store.close()
    (tmp_path / "kek.json").unlink()
    with pytest.raises(FailedPrecondition, match=r"kek\.json is missing"):
        open_local(tmp_path)
    assert not (tmp_path / "kek.json").exists()


def test_a_missing_kek_file_is_refused_even_before_any_dek(tmp_path: Path) -> None:
    # The store records the KEK id, so the file is known to be needed.
    store, _ = open_local(tmp_path)
    store.close()
    (tmp_path / "kek.json").unlink()
    with pytest.raises(FailedPrecondition, match="restore the file from a backup"):
        open_local(tmp_path)


def test_a_corrupt_kek_file_is_refused_at_start(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    km.create_dek("pvc-1")
    store.close()
    (tmp_path / "kek.json").write_text('{"v":1,"keks":{}}')
    with pytest.raises(FailedPrecondition, match="does not hold KEK"):
        open_local(tmp_path)


def test_a_kek_file_from_elsewhere_is_refused_by_fingerprint(tmp_path: Path) -> None:
    store, _ = open_local(tmp_path / "a")
    store.close()
    other_store, _ = open_local(tmp_path / "b")
    other_store.close()
    doc_a = json.loads((tmp_path / "a" / "kek.json").read_text())
    doc_b = json.loads((tmp_path / "b" / "kek.json").read_text())
    (kid_a,) = doc_a["keks"]
    (kid_b,) = doc_b["keks"]
    doc_a["keks"][kid_a] = doc_b["keks"][kid_b]
    (tmp_path / "a" / "kek.json").write_text(json.dumps(doc_a))
    with pytest.raises(FailedPrecondition, match="does not match the fingerprint"):
        open_local(tmp_path / "a")


def test_wrapped_deks_without_a_key_set_record_are_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cryptvol.db")
    store.txn([], [Put(dek_key("pvc-1"), b"{}")])
    store.close()
    with pytest.raises(FailedPrecondition, match="holds 1 wrapped data keys but no key-set"):
        open_local(tmp_path)


def test_the_store_is_shared_with_other_records(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    store.txn([], [Put("/cryptvol/volumes/pvc-1", b"{}")])
    km.create_dek("pvc-1")
    assert store.get("/cryptvol/volumes/pvc-1") is not None
    store.close()


def test_concurrent_creates_of_one_volume_agree_on_one_dek(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    results: list[bytes] = []
    lock = threading.Lock()

    def create(volume: str) -> None:
        dek = km.create_dek(volume).reveal()
        with lock:
            results.append(dek)

    threads = [threading.Thread(target=create, args=(f"pvc-{i % 4}",)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 4
    for i in range(4):
        assert km.get_dek(f"pvc-{i}").reveal() in results
    store.close()


def test_two_managers_on_one_store_share_the_first_kek(tmp_path: Path) -> None:
    store, km1 = open_local(tmp_path)
    km2 = KeyManager(store, km1.provider)
    dek = km1.create_dek("pvc-1")
    assert km2.get_dek("pvc-1") == dek
    store.close()


def test_a_manager_that_could_not_load_heals_on_its_next_use(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    dek = km.create_dek("pvc-1")
    store.close()
    (tmp_path / "kek.json").rename(tmp_path / "kek.json.bak")
    store = SqliteStore(tmp_path / "cryptvol.db")
    km = KeyManager(store, LocalKekProvider(tmp_path), lazy=True)
    assert not km.ready() and "kek.json is missing" in km.not_ready_reason()
    with pytest.raises(Unavailable, match="not ready"):
        km.get_dek("pvc-1")
    (tmp_path / "kek.json.bak").rename(tmp_path / "kek.json")
    time.sleep(1.05)
    assert km.get_dek("pvc-1") == dek and km.ready()
    store.close()


def test_an_empty_volume_id_is_refused(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    with pytest.raises(InvalidArgument):
        km.create_dek("")
    store.close()
