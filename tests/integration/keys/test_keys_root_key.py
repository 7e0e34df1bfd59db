"""Only `keys init-root-key` makes a root key; a KEK is sealed only by the root key the key
set already uses. Against a real etcd member, with every command run as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.manager import KeyManager
from cryptvol.keys.rotation import Rotation
from cryptvol.store.etcd import EtcdStore
from support.etcd_cluster import EtcdCluster


def cryptvol(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    return subprocess.run(
        [sys.executable, "-m", "cryptvol", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd").start()
    yield cluster
    cluster.stop()


def test_a_mistyped_root_key_path_is_refused_by_every_command_writing_nothing(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    root_key = tmp_path / "root.key"
    make_root_key(root_key)
    store = EtcdStore(etcd.endpoints)
    KeyManager(store, RootKeyProvider(root_key)).create_dek("pvc-1")
    before = store.revision()
    typo = tmp_path / "typo.key"
    ep = ["--etcd-endpoints", etcd.endpoints, "--root-key", str(typo)]
    state = tmp_path / "state"
    runs = {
        "prepare": cryptvol("keys", "prepare", *ep),
        "rotate": cryptvol("keys", "rotate", *ep),
        "reencrypt": cryptvol("keys", "reencrypt", *ep),
        "status": cryptvol("keys", "status", *ep),
        "export": cryptvol("keys", "export", "--out", str(tmp_path / "b.json"), *ep),
        "serve-replica": cryptvol("keys", "serve-replica", "--name", "r", *ep),
        "serve": cryptvol("serve", "--endpoint", f"unix://{tmp_path}/csi.sock",
                          "--state-dir", str(state), "--pool-dir", str(tmp_path / "pool"), *ep),
    }  # fmt: skip
    for name, run in runs.items():
        assert run.returncode != 0, f"{name}: {run.stdout}{run.stderr}"
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, f"{name}: {run.stderr}"
        assert f"the root key file {typo} does not exist" in lines[0], name
        assert "init-root-key" in lines[0], name
    assert not typo.exists()
    assert not state.exists() and not (tmp_path / "pool").exists()
    assert not (tmp_path / "b.json").exists()
    assert store.revision() == before
    assert Rotation(store).read()[0].stage == "start"

    made = cryptvol("keys", "init-root-key", str(typo))
    assert made.returncode == 0 and typo.exists()
    store.close()


def test_prepare_with_another_root_key_names_both_fingerprints_and_writes_nothing(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    ours, other = tmp_path / "ours.key", tmp_path / "other.key"
    make_root_key(ours)
    make_root_key(other)
    store = EtcdStore(etcd.endpoints)
    KeyManager(store, RootKeyProvider(ours)).create_dek("pvc-1")
    before = store.revision()
    run = cryptvol("keys", "prepare", "--etcd-endpoints", etcd.endpoints, "--root-key", str(other))
    assert run.returncode != 0
    line = run.stderr.strip()
    assert "\n" not in line
    assert f"fingerprint {RootKeyProvider(ours).sealer()}" in line
    assert f"{other} has fingerprint {RootKeyProvider(other).sealer()}" in line
    assert store.revision() == before
    run = cryptvol("keys", "prepare", "--wait", "0", "--etcd-endpoints", etcd.endpoints,
                   "--root-key", str(ours))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert Rotation(store).read()[0].sealed_by == RootKeyProvider(ours).sealer()
    store.close()
