"""Benchmark: KEK re-wrap throughput for 100,000 DEKs, and `keys status` latency.

Prints numbers, asserts nothing. On SQLite (a temp state dir) and on a real one-member etcd
(Debian's etcd-server, started here on loopback ports with a temp data dir):
  1. seed N wrapped DEKs (default 100,000) under the first KEK;
  2. `prepare`, `rotate`, then time `reencrypt` (every DEK re-wrapped by compare-and-swap,
     batch by batch with the persisted cursor, plus the sweep before retiring the old KEK);
  3. time `keys status` in-process (median of 20) and as a whole CLI process (median of 5).
Goals (issue 15): re-wrap ≤ 1 s on SQLite, ≤ 5 s on etcd; `keys status` as a process ≤ 100 ms.

    .venv/bin/python bench/bench_rewrap.py [--deks 100000] [--only sqlite|etcd]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cryptvol.keys import envelope  # noqa: E402
from cryptvol.keys.kek import KekProvider  # noqa: E402
from cryptvol.keys.kek_local import LocalKekProvider  # noqa: E402
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key  # noqa: E402
from cryptvol.keys.keyset import dek_key  # noqa: E402
from cryptvol.keys.manager import load_key_set  # noqa: E402
from cryptvol.keys.rotation import Rotation  # noqa: E402
from cryptvol.store.base import Put, Store  # noqa: E402
from cryptvol.store.etcd import EtcdStore  # noqa: E402
from cryptvol.store.sqlite import SqliteStore  # noqa: E402
from cryptvol.system.secret import Secret  # noqa: E402
from support.etcd_cluster import EtcdCluster  # noqa: E402


def seed(store: Store, provider: KekProvider, n: int, batch: int) -> float:
    started = time.perf_counter()
    current = load_key_set(store, provider).current
    for start in range(0, n, batch):
        ops = [
            Put(
                dek_key(f"pvc-{i:07d}"),
                envelope.wrap(current, Secret(os.urandom(32)), f"pvc-{i:07d}"),
            )
            for i in range(start, min(n, start + batch))
        ]
        store.txn([], ops)
    return time.perf_counter() - started


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 without a pid."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(
    name: str,
    store: Store,
    provider: KekProvider,
    n: int,
    cli_args: list[str],
    batch: int,
    server_pid: int | None = None,
) -> None:
    print(f"== {name}: {n} DEKs")
    print(f"seeding:            {seed(store, provider, n, batch):7.2f} s")
    rotation = Rotation(store, provider)
    rotation.prepare(wait=0)
    rotation.rotate(wait=0)
    started, cpu, server = time.perf_counter(), time.process_time(), proc_cpu(server_pid)
    # The last progress report comes once every DEK names the new KEK (the walk and its
    # sweep); what follows is retiring the old KEK and forgetting the store's history.
    rewrapped_at = [started]
    state = rotation.reencrypt(
        wait=0, progress=lambda done, total: rewrapped_at.append(time.perf_counter())
    )
    spent = time.perf_counter() - started
    walk = rewrapped_at[-1] - started
    cpu = time.process_time() - cpu
    server = proc_cpu(server_pid) - server
    print(
        f"re-wrap (reencrypt): {spent:7.2f} s  ({state.rewrapped / spent:,.0f} DEKs/s,"
        f" {state.rewrapped} re-wrapped)"
    )
    print(
        f"  of which every DEK re-wrapped after {walk:.2f} s; retiring the old KEK and"
        f" forgetting the store's history of it: {spent - walk:.2f} s"
    )
    print(f"  CPU used: cryptvol {cpu:.2f} s" + (f", etcd {server:.2f} s" if server_pid else ""))
    times = []
    for _ in range(20):
        t = time.perf_counter()
        rotation.status()
        times.append(time.perf_counter() - t)
    print(f"status in-process:  {statistics.median(times) * 1000:7.1f} ms median of 20")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    cli = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cryptvol.cli.keys", "status", *cli_args],
            check=True,
            capture_output=True,
            env=env,
        )
        cli.append(time.perf_counter() - t)
    print(
        f"status CLI process: {statistics.median(cli) * 1000:7.1f} ms median of 5"
        " (python start-up and imports included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deks", type=int, default=100_000)
    parser.add_argument("--only", choices=["sqlite", "etcd"])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only in (None, "sqlite"):
            state = root / "state"
            state.mkdir()
            store = SqliteStore(state / "cryptvol.db")
            bench(
                "SQLite",
                store,
                LocalKekProvider(state),
                args.deks,
                ["--state-dir", str(state)],
                1000,
            )
            store.close()
        if args.only in (None, "etcd"):
            cluster = EtcdCluster(root / "etcd", size=1).start()
            try:
                root_key = root / "root.key"
                make_root_key(root_key)
                store = EtcdStore(cluster.endpoints)
                cli_args = ["--etcd-endpoints", cluster.endpoints, "--root-key", str(root_key)]
                pid = cluster.members[0].proc.pid if cluster.members[0].proc else None
                bench(
                    "etcd (1 member, loopback)",
                    store,
                    RootKeyProvider(root_key),
                    args.deks,
                    cli_args,
                    128,
                    server_pid=pid,
                )
                store.close()
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
