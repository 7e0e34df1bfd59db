"""Key-manager replicas against real etcd: the RKE2 restart scenario, etcd down at start, and
a transition refused while a replica disagrees. Replicas are real processes
(`python -m cryptvol.cli.keys serve-replica`); the CLI runs as a process too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replica_proc import ReplicaProc

from cryptvol.keys import envelope
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import DEK_PREFIX
from cryptvol.keys.manager import KeyManager
from cryptvol.store.etcd import EtcdStore
from support.etcd_cluster import EtcdCluster


def keys_cli(
    *args: str, endpoints: str, root_key: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    env.update(CRYPTVOL_ETCD_ENDPOINTS=endpoints, CRYPTVOL_ROOT_KEY=str(root_key))
    proc = subprocess.run(
        [sys.executable, "-m", "cryptvol.cli.keys", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    if check:
        assert proc.returncode == 0, f"keys {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def status(endpoints: str, root_key: Path) -> dict[str, Any]:
    return dict(
        json.loads(keys_cli("status", "--json", endpoints=endpoints, root_key=root_key).stdout)
    )


def wait_agreement(
    endpoints: str, root_key: Path, names: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = status(endpoints, root_key)
        live = {r["name"]: r for r in doc["replicas"]}
        if set(live) == names and all(r["agrees"] for r in live.values()):
            return doc
        assert time.monotonic() < deadline, f"replicas never agreed: {doc['replicas']}"
        time.sleep(0.3)


@pytest.fixture
def replicas() -> Iterator[list[ReplicaProc]]:
    started: list[ReplicaProc] = []
    yield started
    for r in started:
        r.stop()


def test_rke2_scenario_restarts_after_prepare_lose_nothing(
    tmp_path: Path, replicas: list[ReplicaProc]
) -> None:
    """Three etcd members and two replicas; prepare; restart every member, then every
    replica; all come back ready in stage prepare with both KEKs and one hash; then rotate
    and reencrypt re-wrap every DEK under the new KEK and retire the old one."""
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    try:
        root_key = tmp_path / "root.key"
        make_root_key(root_key)
        ep = cluster.endpoints
        store = EtcdStore(ep)
        km = KeyManager(store, RootKeyProvider(root_key))
        deks = {f"pvc-{i:03d}": km.create_dek(f"pvc-{i:03d}") for i in range(150)}
        old_kek = km.loaded.current.id

        replicas += [ReplicaProc(n, ep, root_key, tmp_path).start() for n in ("km-a", "km-b")]
        for r in replicas:
            r.wait_ready()
        wait_agreement(ep, root_key, {"km-a", "km-b"})

        out = keys_cli("prepare", endpoints=ep, root_key=root_key).stdout
        new_kek = out.split()[2].rstrip(";")
        doc = wait_agreement(ep, root_key, {"km-a", "km-b"})
        assert doc["stage"] == "prepare"

        for member in cluster.members:
            cluster.restart_member(member)
            for r in replicas:
                assert r.alive()
        for r in replicas:
            r.stop()
            r.start()
        for r in replicas:
            r.wait_ready()
            st = r.status()
            assert st["stage"] == "prepare"
            assert {k["id"]: k["role"] for k in st["keks"]} == {
                old_kek: "current",
                new_kek: "prepared",
            }
        doc = wait_agreement(ep, root_key, {"km-a", "km-b"})
        assert len({r["report"] for r in doc["replicas"]}) == 1
        assert doc["stage"] == "prepare"

        keys_cli("rotate", endpoints=ep, root_key=root_key)
        wait_agreement(ep, root_key, {"km-a", "km-b"})
        keys_cli("reencrypt", endpoints=ep, root_key=root_key)
        doc = wait_agreement(ep, root_key, {"km-a", "km-b"})
        assert doc["stage"] == "reencrypt_finished"
        assert [k["id"] for k in doc["keks"]] == [new_kek]
        assert [r["id"] for r in doc["retired"]] == [old_kek]
        for r in replicas:
            assert [k["id"] for k in r.status()["keks"]] == [new_kek]

        fresh = KeyManager(store, RootKeyProvider(root_key))
        assert set(fresh.loaded.keks) == {new_kek}
        entries = store.range(DEK_PREFIX)
        assert len(entries) == len(deks)
        assert {envelope.peek_kek_id(e.value, what="") for e in entries} == {new_kek}
        for vol, dek in deks.items():
            assert fresh.get_dek(vol) == dek
        store.close()
    finally:
        cluster.stop()


def test_a_replica_started_while_etcd_is_down_waits_and_then_becomes_ready(
    tmp_path: Path, replicas: list[ReplicaProc]
) -> None:
    cluster = EtcdCluster(tmp_path / "etcd", size=1)  # ports chosen, not started
    root_key = tmp_path / "root.key"
    make_root_key(root_key)
    try:
        r = ReplicaProc("km-early", cluster.endpoints, root_key, tmp_path).start()
        replicas.append(r)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                code, body = r.get("/readyz")
            except OSError:
                time.sleep(0.1)  # the health server is still starting
                continue
            assert code == 503 and "etcd cannot be reached" in body
            time.sleep(0.2)
        assert r.alive()
        assert r.get("/healthz")[0] == 200

        cluster.start()
        r.wait_ready(timeout=30)
        assert r.status()["stage"] == "start"
    finally:
        cluster.stop()


@pytest.fixture
def agreeing(tmp_path: Path, replicas: list[ReplicaProc]) -> Iterator[tuple[str, Path]]:
    """One etcd member and two replicas, km-a and km-b (report TTL 60 s), that agree:
    yields the endpoints and the root key."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1).start()
    try:
        root_key = tmp_path / "root.key"
        make_root_key(root_key)
        ep = cluster.endpoints
        replicas += [
            ReplicaProc(n, ep, root_key, tmp_path, ttl=60).start() for n in ("km-a", "km-b")
        ]
        for r in replicas:
            r.wait_ready()
        wait_agreement(ep, root_key, {"km-a", "km-b"})
        yield ep, root_key
    finally:
        cluster.stop()


def test_a_transition_is_refused_while_a_replica_disagrees_and_names_it(
    agreeing: tuple[str, Path], replicas: list[ReplicaProc]
) -> None:
    """A replica that hangs (SIGSTOP) keeps its last report alive until its lease lapses:
    it still reports stage start after prepare, so rotate must be refused, naming it."""
    ep, root_key = agreeing
    stuck = replicas[1]
    stuck.signal(signal.SIGSTOP)
    try:
        keys_cli("prepare", endpoints=ep, root_key=root_key)
        time.sleep(1)
        refused = keys_cli("rotate", "--wait", "2", endpoints=ep, root_key=root_key, check=False)
        assert refused.returncode != 0
        assert "km-b reports start-" in refused.stderr
        assert "km-a" not in refused.stderr
        assert status(ep, root_key)["stage"] == "prepare"
    finally:
        stuck.signal(signal.SIGCONT)
    keys_cli("rotate", "--wait", "30", endpoints=ep, root_key=root_key)
    assert status(ep, root_key)["stage"] == "rotate"


def test_replicas_are_not_ready_within_their_ttl_of_losing_etcd_and_ready_once_it_is_back(
    tmp_path: Path, replicas: list[ReplicaProc]
) -> None:
    cluster = EtcdCluster(tmp_path / "etcd", size=2).start()
    root_key = tmp_path / "root.key"
    make_root_key(root_key)
    ttl = 5.0
    try:
        replicas += [
            ReplicaProc(n, cluster.endpoints, root_key, tmp_path, ttl=ttl).start()
            for n in ("km-a", "km-b")
        ]
        for r in replicas:
            r.wait_ready()
        cluster.stop()
        lost = time.monotonic()
        for r in replicas:
            while r.ready():
                assert time.monotonic() - lost < ttl, f"{r.name} still ready after {ttl}s"
                time.sleep(0.1)
            code, body = r.get("/readyz")
            assert code == 503 and "etcd cannot be reached" in body, body
            assert r.alive() and r.get("/healthz")[0] == 200
        cluster.start()
        for r in replicas:
            r.wait_ready(timeout=30)
    finally:
        cluster.stop()


def test_a_replica_stopped_with_sigterm_leaves_the_agreement_at_once(
    agreeing: tuple[str, Path], replicas: list[ReplicaProc]
) -> None:
    replicas[1].stop()  # SIGTERM, and it exits 0; its report's lease had 60 s to run
    assert {r["name"] for r in status(*agreeing)["replicas"]} == {"km-a"}
