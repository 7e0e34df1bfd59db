"""etcd errors are one short line per member: the cause, never the transport's own text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryptvol.errors import Unavailable
from cryptvol.store.base import Put
from cryptvol.store.etcd import EtcdStore
from support.etcd_cluster import EtcdCluster, free_port


def test_every_member_stopped_gives_one_line_naming_each_member_once(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    store = EtcdStore(cluster.endpoints)
    store.get("/up")
    cluster.stop()
    with pytest.raises(Unavailable) as info:
        store.get("/down")
    message = str(info.value)
    assert "\n" not in message and len(message) < 250, message
    for m in cluster.members:
        assert message.count(f"127.0.0.1:{m.client_port}: connection refused") == 1, message
    for noise in ("HTTPConnectionPool", "urllib3", "Max retries", "object at 0x"):
        assert noise not in message

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    root_key = tmp_path / "root.key"
    subprocess.run([sys.executable, "-m", "cryptvol", "keys", "init-root-key", str(root_key)],
                   check=True, capture_output=True, env=env)
    cli = subprocess.run(
        [sys.executable, "-m", "cryptvol", "keys", "status", "--etcd-endpoints",
         cluster.endpoints, "--root-key", str(root_key)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert cli.returncode != 0
    assert cli.stdout == "" and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "Error: etcd cannot be reached: 127.0.0.1:" in cli.stderr
    assert "HTTPConnectionPool" not in cli.stderr


def test_a_member_that_never_answers_times_out_in_few_words() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = EtcdStore(f"127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(Unavailable) as info:
            store.get("/x")
    assert str(info.value) == f"etcd cannot be reached: 127.0.0.1:{port}: timed out"


def test_a_member_that_is_down_is_skipped_and_a_restarted_one_serves_again_at_once(
    tmp_path: Path,
) -> None:
    cluster = EtcdCluster(tmp_path / "etcd").start()
    try:
        store = EtcdStore(f"127.0.0.1:{free_port()},{cluster.endpoints}", timeout=1)
        assert store.txn([], [Put("/k", b"v")])
        assert store.get("/k") is not None
        member = cluster.members[0]
        cluster.stop_member(member)
        with pytest.raises(Unavailable, match="connection refused"):
            store.get("/k")
        cluster.start_member(member)
        restarted = time.monotonic()
        while True:
            try:
                assert store.get("/k") is not None
                break
            except Unavailable:
                assert time.monotonic() - restarted < 2.5, "still refused after the restart"
                time.sleep(0.1)
        store.close()
    finally:
        cluster.stop()
