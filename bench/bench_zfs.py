"""The ZFS pool's costs, measured on real ZFS (in the test VM):

    .venv/bin/cryptvol vm run --timeout 1800 -- .venv/bin/python bench/bench_zfs.py

1. `snapshot` latency (what CreateSnapshot costs on a zvol).
2. A copy of a 1 GiB zvol with --written-mib MiB written: a clone inside one encryption root
   (constant time) beside a raw send into another root (proportional to what was written).
3. Double encryption: write and read throughput through LUKS2 (dm-crypt, managed-key
   settings) on a zvol in a plain dataset and in a natively encrypted one (aes-256-gcm),
   and of the bare zvols, so the cost of encrypting twice shows beside each cipher alone.

The zpool lives on a loop device over a sparse file in the guest's tmpfs (as in the node
tests): absolute numbers are those of an emulated CPU and memory-backed storage; the
ratios are the point.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.luks import cryptsetup
from cryptvol.luks.cryptsetup import FormatOptions, OpenOptions
from cryptvol.pools.base import CopySource, Pool
from cryptvol.pools.zfs import open_pool
from cryptvol.system import run
from cryptvol.system.secret import Secret
from support.zfs import zfs, zfs_test_pool

MIB = 1024 * 1024
KEY = Secret(os.urandom(32))
MANAGED = FormatOptions(pbkdf="pbkdf2", pbkdf_force_iterations=1000)


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def fill(device: str, mib: int) -> None:
    run(["dd", "if=/dev/urandom", f"of={device}", "bs=1M", f"count={mib}", "oflag=direct",
         "status=none"], timeout=3600)


def throughput(device: str, mib: int) -> tuple[float, float]:
    """MiB/s writing then reading `mib` MiB with direct I/O (no page cache between)."""
    write = timed(lambda: run(["dd", "if=/dev/zero", f"of={device}", "bs=1M", f"count={mib}",
                               "oflag=direct", "status=none"], timeout=3600))
    read = timed(lambda: run(["dd", f"if={device}", "of=/dev/null", "bs=1M", f"count={mib}",
                              "iflag=direct", "status=none"], timeout=3600))
    return mib / write, mib / read


def new_volume(pool: Pool, label: str, size: int) -> str:
    vid = f"cv-bench-{label}-{uuid.uuid4().hex[:6]}"
    pool.provisioner.create(vid, size)
    return vid


def bench_snapshots(pool: Pool, repeat: int) -> None:
    vid = new_volume(pool, "snap", 256 * MIB)
    fill(pool.node.attach(vid), 16)
    times = [timed(lambda i=i: pool.provisioner.snapshot(vid, f"s{i}")) for i in range(repeat)]
    print(f"snapshot of a zvol: p50 {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {repeat}")


def bench_copies(pool: Pool, written_mib: int) -> None:
    src = new_volume(pool, "copy-src", 1024 * MIB)
    fill(pool.node.attach(src), written_mib)
    pool.provisioner.snapshot(src, "s")
    clone = timed(lambda: pool.provisioner.copy(CopySource(src, "s"), f"{src}-clone", 1024 * MIB))
    pool.provisioner.delete(f"{src}-clone")
    # The same source re-keyed on its own: its copies must be raw sends.
    key = Path(tempfile.mkdtemp()) / "own.key"
    key.write_bytes(os.urandom(32))
    zfs("change-key", "-o", "keyformat=raw", "-o", f"keylocation=file://{key}",
        f"{pool.location}/{src}")
    raw = timed(lambda: pool.provisioner.copy(CopySource(src, "s"), f"{src}-raw", 1024 * MIB))
    print(f"copy of a 1 GiB zvol with {written_mib} MiB written: zfs clone {clone * 1000:.0f} ms,"
          f" raw send across encryption roots {raw:.1f} s ({written_mib / raw:.0f} MiB/s)")
    pool.provisioner.delete(f"{src}-raw")


def bench_double_encryption(plain: Pool, encrypted: Pool, mib: int) -> None:
    print(f"throughput, {mib} MiB, direct I/O, write / read MiB/s:")
    for label, pool in (("a plain dataset", plain),
                        ("an encrypted dataset (aes-256-gcm)", encrypted)):
        vid = new_volume(pool, "tp", (mib + 32) * MIB)
        device = pool.node.attach(vid)
        bare = throughput(device, mib)
        cryptsetup.format_device(device, KEY, MANAGED)
        name = f"bench-{vid}"
        cryptsetup.open_device(device, name, KEY, OpenOptions())
        try:
            luks = throughput(str(cryptsetup.mapping_path(name)), mib)
        finally:
            cryptsetup.close_device(name)
        print(f"  zvol in {label}: bare {bare[0]:.0f} / {bare[1]:.0f}; "
              f"with LUKS2 {luks[0]:.0f} / {luks[1]:.0f}")
        pool.provisioner.delete(vid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--written-mib", type=int, default=512)
    parser.add_argument("--throughput-mib", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, zfs_test_pool(Path(tmp), size=3 * 1024**3) as zp:
        plain, encrypted = open_pool("z", zp.plain), open_pool("ze", zp.encrypted)
        bench_snapshots(plain, args.repeat)
        bench_copies(encrypted, args.written_mib)
        bench_double_encryption(plain, encrypted, args.throughput_mib)


if __name__ == "__main__":
    main()
