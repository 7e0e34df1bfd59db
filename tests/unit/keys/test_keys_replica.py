"""A replica's loop on the embedded store: load, follow rotations, report, never crash."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from cryptvol.keys.config import KeysConfig, open_keys
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.replica import Replica
from cryptvol.keys.replicas import live_replicas
from cryptvol.keys.rotation import Rotation


def test_a_replica_is_ready_once_loaded_and_reported(tmp_path: Path) -> None:
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    replica = Replica(km, "ctrl-1", role="controller", count_interval=0)
    assert not replica.ready() and "not yet reported" in replica.not_ready_reason()
    replica.tick()
    assert replica.ready()
    (report,) = live_replicas(store)
    assert report.name == "ctrl-1" and report.role == "controller"
    assert report.report == Rotation(store).read()[0].report()
    store.close()


def test_a_replica_follows_a_transition_on_its_next_round(tmp_path: Path) -> None:
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    replica = Replica(km, "r", count_interval=0)
    replica.tick()
    Rotation(store, LocalKekProvider(tmp_path)).prepare(wait=0)
    replica.tick()
    assert replica.status()["stage"] == "prepare"
    assert [k["role"] for k in replica.status()["keks"]] == ["current", "prepared"]
    (report,) = live_replicas(store)
    assert report.stage == "prepare" and len(report.keks) == 2
    store.close()


def test_a_replica_without_its_kek_stays_up_not_ready_and_recovers(tmp_path: Path) -> None:
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    km.create_dek("pvc-1")
    store.close()
    shutil.move(tmp_path / "kek.json", tmp_path / "kek.json.bak")

    store, km = open_keys(KeysConfig(state_dir=tmp_path), lazy=True)
    replica = Replica(km, "r", count_interval=0)
    replica.tick()
    assert not replica.ready()
    assert "kek.json is missing" in replica.not_ready_reason()
    (report,) = live_replicas(store)
    assert not report.ready and "kek.json is missing" in report.reason

    shutil.move(tmp_path / "kek.json.bak", tmp_path / "kek.json")
    replica.tick()
    assert replica.ready() and len(km.get_dek("pvc-1")) == 32
    store.close()


def test_a_replica_restarted_in_any_stage_loads_and_reports_that_stage(tmp_path: Path) -> None:
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    for i in range(50):
        km.create_dek(f"pvc-{i:02d}")
    rotation = Rotation(store, LocalKekProvider(tmp_path))

    def stop(done: int, total: int) -> None:
        raise RuntimeError("killed mid-reencrypt")

    steps = [
        lambda: None,
        # --force: the reports of the replicas made below are not what this test is about.
        lambda: rotation.prepare(force=True),
        lambda: rotation.rotate(force=True),
        lambda: rotation.reencrypt(force=True, batch=10, progress=stop),
        lambda: rotation.reencrypt(force=True),
    ]
    seen = []
    for step in steps:
        with contextlib.suppress(RuntimeError):
            step()
        record = rotation.read()[0]
        _, fresh = open_keys(KeysConfig(state_dir=tmp_path), lazy=True)
        replica = Replica(fresh, f"restarted-in-{record.stage}", count_interval=0)
        replica.tick()
        assert replica.ready(), replica.not_ready_reason()
        assert replica.status()["report"] == record.report()
        assert fresh.get_dek("pvc-07") == km.get_dek("pvc-07")
        seen.append(record.stage)
        fresh.store.close()
    assert seen == ["start", "prepare", "rotate", "reencrypt_active", "reencrypt_finished"]
    store.close()
