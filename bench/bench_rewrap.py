"""Benchmark: KEK re-wrap throughput for 100,000 DEKs, and `keys status` latency.

Prints numbers, asserts nothing. On SQLite (a temp state dir) and on a real one-member etcd
(Debian's etcd-server, started here on loopback ports with a temp data dir):
  1. seed N wrapped DEKs (default 100,000) under the first KEK;
  2. `prepare`, `rotate`, then time `reencrypt` (every DEK re-wrapped by compare-and-swap,
     batch by batch with the persisted cursor, plus the sweep before retiring the old KEK);
  3. time `keys status` in-process (median of 20) and as a whole `cryptvol keys status`
     process (wall and CPU, median of 5 after one that may write bytecode caches).
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
    wall, cpu_used = time_process(status_argv(cli_args))
    print(
        f"status CLI process: {wall * 1000:7.1f} ms median of 5, CPU {cpu_used * 1000:.0f} ms"
        " (`cryptvol keys status`, python start-up and imports included)"
    )
    # What no `keys status` on this store can go below: python starting and importing click
    # and, for etcd, grpc and the etcd stubs, with nothing of cryptvol's own run.
    imports = "import click" + (
        "; import grpc; import cryptvol.store.gen.etcd_pb2_grpc"
        if isinstance(store, EtcdStore) else ""
    )
    wall, cpu_used = time_process([sys.executable, "-c", imports])
    print(
        f"  its import floor: {wall * 1000:7.1f} ms median of 5, CPU {cpu_used * 1000:.0f} ms"
        f" (python -c '{imports}')"
    )


def time_process(argv: list[str]) -> tuple[float, float]:
    """Median wall and CPU seconds of 5 runs of `argv`, after one that may still be writing
    bytecode caches."""
    wall, cpu_used, env = [], [], cli_env()
    for run in range(6):
        started, before = time.perf_counter(), os.times()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        after = os.times()
        if run:
            wall.append(time.perf_counter() - started)
            cpu_used.append(
                after.children_user + after.children_system
                - before.children_user - before.children_system
            )
    return statistics.median(wall), statistics.median(cpu_used)


def status_argv(cli_args: list[str]) -> list[str]:
    """`cryptvol keys status` as an operator runs it: the installed console script."""
    script = Path(sys.executable).with_name("cryptvol")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cryptvol"]
    return [*command, "keys", "status", *cli_args]


def cli_env() -> dict[str, str]:
    """The environment without cryptvol's settings, and with bytecode caching allowed: an
    installed package has its modules compiled (pip compiles them), while a test or VM
    environment that sets PYTHONDONTWRITEBYTECODE would make every run compile them anew
    (about 20 ms more)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRYPTVOL_") and k != "PYTHONDONTWRITEBYTECODE"
    }


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
