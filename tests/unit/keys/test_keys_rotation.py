"""Staged KEK rotation on the embedded store: order, CAS, reencrypt, retirement, agreement."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, NotFound
from cryptvol.keys import envelope, rotation
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.keyset import DEK_PREFIX, KeySetRecord
from cryptvol.keys.manager import KeyManager, open_local
from cryptvol.keys.replicas import REPLICA_PREFIX, ReplicaReport
from cryptvol.keys.rotation import Rotation
from cryptvol.keys.status import REENCRYPT_KEY
from cryptvol.store.base import Put
from cryptvol.store.sqlite import SqliteStore

Setup = tuple[SqliteStore, KeyManager, Rotation]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    store, km = open_local(tmp_path)
    return store, km, Rotation(store, LocalKekProvider(tmp_path))


def kek_ids_of_deks(store: SqliteStore) -> set[str]:
    return {envelope.peek_kek_id(e.value, what="") for e in store.range(DEK_PREFIX)}


def test_a_full_rotation_rewraps_every_dek_and_retires_the_old_kek(
    setup: Setup, tmp_path: Path
) -> None:
    store, km, rot = setup
    deks = {f"pvc-{i:03d}": km.create_dek(f"pvc-{i:03d}") for i in range(250)}
    old = rot.read()[0].current.id

    new = rot.prepare(wait=0)
    assert rot.read()[0].stage == "prepare"
    km.reload()
    assert set(km.loaded.keks) == {old, new.id}
    assert km.create_dek("pvc-during-prepare")  # still wrapped under the old KEK
    assert kek_ids_of_deks(store) == {old}

    rot.rotate(wait=0)
    km.reload()
    km.create_dek("pvc-after-rotate")
    assert kek_ids_of_deks(store) == {old, new.id}

    seen: list[tuple[int, int]] = []
    state = rot.reencrypt(wait=0, batch=64, progress=lambda d, t: seen.append((d, t)))
    assert state.finished and state.done == 252 and seen[-1] == (252, 252)
    record = rot.read()[0]
    assert record.stage == "reencrypt_finished"
    assert [k.id for k in record.keks] == [new.id] and record.is_retired(old)
    assert kek_ids_of_deks(store) == {new.id}
    assert set(json.loads((tmp_path / "kek.json").read_text())["keks"]) == {new.id}
    km.reload()
    for vol, dek in deks.items():
        assert km.get_dek(vol) == dek


def test_transitions_out_of_order_name_the_stage_and_the_allowed_next(setup: Setup) -> None:
    _, _, rot = setup
    with pytest.raises(
        FailedPrecondition,
        match="cannot rotate: the stage is start; allowed next from there: prepare",
    ):
        rot.rotate(wait=0)
    with pytest.raises(FailedPrecondition, match="cannot reencrypt: the stage is start"):
        rot.reencrypt(wait=0)
    rot.prepare(wait=0)
    with pytest.raises(
        FailedPrecondition, match="the stage is prepare; allowed next from there: rotate"
    ):
        rot.prepare(wait=0)


def test_force_skips_the_order_but_not_the_need_for_a_prepared_kek(setup: Setup) -> None:
    _, km, rot = setup
    km.create_dek("a")
    with pytest.raises(FailedPrecondition, match="no KEK is prepared"):
        rot.rotate(force=True, wait=0)
    rot.prepare(wait=0)
    rot.rotate(wait=0)
    rot.prepare(force=True, wait=0)  # from rotate: a third KEK joins
    assert rot.read()[0].stage == "prepare"


def test_a_disagreeing_live_replica_blocks_a_transition_and_is_named(setup: Setup) -> None:
    store, _, rot = setup
    record = rot.read()[0]
    for name, report in [("good", record.report()), ("stale", "start-" + "0" * 64)]:
        r = ReplicaReport(name, "test", report, True, "", time.time(), 1, "h", ())
        store.put_lease(REPLICA_PREFIX + name, r.to_bytes(), ttl=30)
    with pytest.raises(FailedPrecondition, match=r"stale reports start-000000000000") as info:
        rot.prepare(wait=0.3)
    assert "good" not in str(info.value)
    assert rot.read()[0].stage == "start"
    rot.prepare(wait=0, force=True)


def test_reencrypt_resumes_from_its_persisted_cursor(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rotation, "CURSOR_EVERY", 0.0)  # save the cursor after every batch
    store, km, rot = setup
    for i in range(100):
        km.create_dek(f"v{i:03d}")
    rot.prepare(wait=0)
    rot.rotate(wait=0)

    class Crash(Exception):
        pass

    def crash_after_three_batches(done: int, total: int) -> None:
        if done >= 30:
            raise Crash

    with pytest.raises(Crash):
        rot.reencrypt(wait=0, batch=10, progress=crash_after_three_batches)
    state = json.loads(store.get(REENCRYPT_KEY).value)  # type: ignore[union-attr]
    assert state["cursor"] == DEK_PREFIX + "v029" and state["done"] == 30
    km.delete_dek("v050")  # deleted while reencrypt was stopped: must not come back
    final = rot.reencrypt(wait=0, batch=10)
    assert final.done == 99 and final.finished
    with pytest.raises(NotFound):
        km.get_dek("v050")


def test_a_replica_with_a_stale_key_set_cannot_create_a_dek_under_it(setup: Setup) -> None:
    store, km, rot = setup
    stale = KeyManager(store, km.provider)
    rot.prepare(wait=0)
    rot.rotate(wait=0)
    stale.create_dek("late")  # its CAS on the key-set record fails, so it reloads first
    current = KeySetRecord.from_bytes(store.get("/cryptvol/keys/keyset").value).current.id  # type: ignore[union-attr]
    assert kek_ids_of_deks(store) == {current}


def test_the_last_sweep_rewraps_what_a_wrong_cursor_skipped(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store, km, rot = setup
    for i in range(20):
        km.create_dek(f"v{i:03d}")
    old = rot.read()[0].current.id
    rot.prepare(wait=0)
    rot.rotate(wait=0)

    def stop(done: int, total: int) -> None:
        raise FailedPrecondition("stopped")

    with pytest.raises(FailedPrecondition, match="stopped"):
        rot.reencrypt(wait=0, batch=5, progress=stop)  # two batches of five commit
    skipped = [DEK_PREFIX + f"v{i:03d}" for i in range(10, 15)]
    assert {envelope.peek_kek_id(store.get(k).value, what="") for k in skipped} == {old}  # type: ignore[union-attr]
    entry = store.get(REENCRYPT_KEY)
    assert entry is not None
    state = json.loads(entry.value)
    state.update(cursor=skipped[-1], done=15)  # a wrong cursor: as if v010..v014 were done
    store.txn([], [Put(REENCRYPT_KEY, json.dumps(state).encode())])
    rot.reencrypt(wait=0)
    assert kek_ids_of_deks(store) == {rot.read()[0].current.id}
    assert caplog.text.count("sweep: re-wrapping") == 5
