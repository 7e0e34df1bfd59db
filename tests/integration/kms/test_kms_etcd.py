"""KMS plugin replicas on a real three-member etcd: rotation with two running plugins and a
member down, each plugin restarted in each stage while etcd has no quorum (no crash, Status
not ok until its key set loads, then ok), and SIGKILL of the CLI and of a plugin during
reencrypt, after which the next run completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from cryptvol.keys import envelope
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import DEK_PREFIX, dek_key
from cryptvol.keys.manager import load_key_set
from cryptvol.kms.client import KmsClient
from cryptvol.kms.gen import kms_pb2 as pb
from cryptvol.store.base import Put
from cryptvol.store.etcd import EtcdStore
from cryptvol.system.secret import Secret
from support.etcd_cluster import EtcdCluster
from support.kms import RunningKms, keys_cli


def wait_key_id(client: KmsClient, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        status = client.status()
        seen = f"{status.healthz} {status.key_id}"
        if status.healthz == "ok" and status.key_id == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"Status never said ok with {want}: {seen}")


def check_all(plugins: list[RunningKms], data: dict[bytes, pb.EncryptResponse]) -> None:
    for plugin in plugins:
        assert plugin.client is not None
        for plaintext, sealed in data.items():
            assert plugin.client.decrypt(sealed) == plaintext, plugin.name


def restart_without_quorum(plugin: RunningKms, cluster: EtcdCluster, member: object) -> None:
    """Stop the plugin, take etcd below quorum, start the plugin: it must stay up and say not
    ok; then give quorum back: it must become ok."""
    plugin.stop()
    cluster.stop_member(member)  # type: ignore[arg-type]
    client = plugin.start(wait=False)
    deadline = time.monotonic() + 3
    answers = set()
    while time.monotonic() < deadline:
        assert plugin.alive(), plugin.log_text()[-3000:]
        try:
            answers.add(client.status(timeout=1).healthz == "ok")
        except grpc.RpcError:
            answers.add(False)  # the socket is not up yet: not ok either
        time.sleep(0.2)
    assert answers == {False}
    cluster.start_member(member)  # type: ignore[arg-type]
    client.wait_healthy(60)
    assert plugin.alive()


@dataclass
class Setup:
    cluster: EtcdCluster
    root_key: Path
    store_args: list[str]
    plugins: list[RunningKms]


@contextmanager
def two_plugins(tmp_path: Path, members: int) -> Iterator[Setup]:
    """A real etcd cluster, a root key and two running plugins, kms-a and kms-b."""
    cluster = EtcdCluster(tmp_path / "etcd", size=members).start()
    plugins: list[RunningKms] = []
    try:
        root_key = tmp_path / "root.key"
        make_root_key(root_key)
        store_args = ["--etcd-endpoints", cluster.endpoints, "--root-key", str(root_key)]
        plugins += [RunningKms(tmp_path, name=n, store_args=store_args) for n in ("kms-a", "kms-b")]
        for p in plugins:
            p.start()
        yield Setup(cluster, root_key, store_args, plugins)
        for p in plugins:
            assert p.stop() == 0
    finally:
        for p in plugins:
            p.kill()
        cluster.stop()


def test_rotation_with_two_plugins_a_member_down_and_restarts_in_every_stage(
    tmp_path: Path,
) -> None:
    with two_plugins(tmp_path, 3) as setup:
        cluster, store_args, plugins = setup.cluster, setup.store_args, setup.plugins
        a, b = plugins
        assert a.client is not None and b.client is not None
        data = {b"0" * 32: a.client.encrypt(b"0" * 32)}
        old = data[b"0" * 32].key_id
        _, m1, m2 = cluster.members
        cluster.stop_member(m2)  # one member stays down from here on

        keys_cli("prepare", store_args=store_args)
        restart_without_quorum(a, cluster, m1)
        data[b"1" * 32] = b.client.encrypt(b"1" * 32)
        assert data[b"1" * 32].key_id == old  # prepared, not yet used
        check_all(plugins, data)

        doc = json.loads(keys_cli("status", "--json", store_args=store_args).stdout)
        new = next(k["id"] for k in doc["keks"] if k["role"] == "prepared")
        keys_cli("rotate", store_args=store_args)
        for p in plugins:
            assert p.client is not None
            wait_key_id(p.client, new)
        restart_without_quorum(b, cluster, m1)
        data[b"2" * 32] = b.client.encrypt(b"2" * 32)
        assert data[b"2" * 32].key_id == new
        check_all(plugins, data)

        refused = keys_cli("reencrypt", "--quiet", store_args=store_args, check=False)
        assert refused.returncode == 1 and "kubectl replace" in refused.stderr
        restart_without_quorum(a, cluster, m1)  # in reencrypt_active
        check_all(plugins, data)
        keys_cli("reencrypt", "--quiet", "--retire-grace", "0", store_args=store_args)
        restart_without_quorum(a, cluster, m1)  # in reencrypt_finished
        for p in plugins:
            assert p.client is not None
            wait_key_id(p.client, new)
            deadline = time.monotonic() + 20
            while True:
                try:
                    p.client.decrypt(data[b"0" * 32])
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    break
                assert time.monotonic() < deadline, f"{p.name} still decrypts the retired KEK"
                time.sleep(0.1)
            assert p.client.decrypt(data[b"2" * 32]) == b"2" * 32


def test_sigkill_of_the_cli_and_a_plugin_during_reencrypt_then_the_next_run_completes_it(
    tmp_path: Path,
) -> None:
    with two_plugins(tmp_path, 1) as setup:
        cluster, store_args, plugins = setup.cluster, setup.store_args, setup.plugins
        root_key = setup.root_key
        a, b = plugins
        assert a.client is not None
        store = EtcdStore(cluster.endpoints)
        current = load_key_set(store, RootKeyProvider(root_key)).current
        for start in range(0, 3000, 100):
            store.txn([], [
                Put(dek_key(f"pvc-{i:05d}"), envelope.wrap(current, Secret(os.urandom(32)),
                                                             f"pvc-{i:05d}"))
                for i in range(start, start + 100)
            ])
        keys_cli("prepare", store_args=store_args)
        keys_cli("rotate", store_args=store_args)
        doc = json.loads(keys_cli("status", "--json", store_args=store_args).stdout)
        new = doc["current_kek"]
        wait_key_id(a.client, new)
        after = a.client.encrypt(b"n" * 32)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cryptvol", "keys", "reencrypt", "--quiet", "--batch", "50",
             "--retire-grace", "0", *store_args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        b.kill()
        proc.wait(30)
        stage = json.loads(keys_cli("status", "--json", store_args=store_args).stdout)["stage"]
        print(f"killed in stage {stage}")
        b.start()
        keys_cli("reencrypt", "--quiet", "--retire-grace", "0", store_args=store_args)
        doc = json.loads(keys_cli("status", "--json", store_args=store_args).stdout)
        assert doc["stage"] == "reencrypt_finished" and [k["id"] for k in doc["keks"]] == [new]
        assert {envelope.peek_kek_id(e.value, what="") for e in store.range(DEK_PREFIX)} == {new}
        for p in plugins:
            assert p.client is not None
            wait_key_id(p.client, new)
            assert p.client.decrypt(after) == b"n" * 32
        store.close()
