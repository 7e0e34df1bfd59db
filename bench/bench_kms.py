"""Benchmark: the KMS v2 plugin's Encrypt and Decrypt over its unix socket.

Prints numbers, asserts nothing. Starts the real `cryptvol kms serve` (SQLite key store in a
temp dir, default logging: one line per RPC) and calls it the way kube-apiserver does, with
a 32-byte plaintext (the size of the apiserver's data-key seed), from 1 and from 16
concurrent callers (one asyncio gRPC client, so the callers cost one process of the
machine's CPUs, not sixteen). For each: p50 and p99 of the per-call latency seen by the
caller and the operations per second. Goal (issue 13): p99 ≤ 2 ms and ≥ 5,000 ops/s on
this 2-core machine; the apiserver's own targets are 100 ms (Encrypt) and 10 ms (Decrypt).

    .venv/bin/python bench/bench_kms.py [--seconds 5] [--callers 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cryptvol.kms.gen import kms_pb2, kms_pb2_grpc  # noqa: E402
from support.kms import RunningKms  # noqa: E402


async def _run(endpoint: str, op: str, callers: int, seconds: float) -> tuple[list[float], float]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = kms_pb2_grpc.KeyManagementServiceStub(channel)
        sealed = await stub.Encrypt(kms_pb2.EncryptRequest(plaintext=os.urandom(32)))
        decrypt = kms_pb2.DecryptRequest(
            ciphertext=sealed.ciphertext, key_id=sealed.key_id, annotations=sealed.annotations
        )
        encrypt = kms_pb2.EncryptRequest(plaintext=os.urandom(32))
        latencies: list[float] = []
        warm_until = time.perf_counter() + min(1.0, seconds / 5)
        stop_at = warm_until + seconds

        async def caller() -> None:
            while True:
                started = time.perf_counter()
                if op == "Encrypt":
                    await stub.Encrypt(encrypt)
                else:
                    await stub.Decrypt(decrypt)
                done = time.perf_counter()
                if done >= stop_at:
                    return
                if started >= warm_until:
                    latencies.append(done - started)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        measured = time.perf_counter() - max(began, warm_until)
        return latencies, measured


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--callers", default="1,16", help="comma-separated caller counts")
    parser.add_argument("--log-level", default="info", help="the plugin's --log-level")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kms-", dir="/tmp") as tmp:
        work = Path(tmp)
        kms = RunningKms(work, store_args=["--state-dir", str(work / "state")],
                         log_level=args.log_level)
        kms.start()
        print(f"cryptvol kms serve on {kms.endpoint} (SQLite key store), 32-byte plaintexts,"
              f" {os.cpu_count()} CPUs")
        print(f"{'op':<8} {'callers':>7} {'calls':>8} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>8}")
        try:
            for callers in (int(c) for c in args.callers.split(",")):
                for op in ("Encrypt", "Decrypt"):
                    latencies, measured = asyncio.run(
                        _run(kms.endpoint, op, callers, args.seconds)
                    )
                    print(
                        f"{op:<8} {callers:>7} {len(latencies):>8}"
                        f" {percentile(latencies, 0.5) * 1000:>8.3f}"
                        f" {percentile(latencies, 0.99) * 1000:>8.3f}"
                        f" {len(latencies) / measured:>8.0f}",
                        flush=True,
                    )
        finally:
            kms.stop()


if __name__ == "__main__":
    main()
