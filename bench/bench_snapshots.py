#!/usr/bin/env python3
"""Snapshot and clone benchmark on real dm-crypt, for each pool kind, through a real driver.

For a volume of --size-mib (default 1024) with --written-mib (default 512) of random data
written through its mapping, per pool kind:
  - CreateSnapshot latency (median of --snapshots);
  - the first stage of a clone: CreateVolume from the volume (a thin clone or a copy of the
    bytes, as the pool declares) and its first NodeStageVolume (its own DEK: a keyslot
    added, the source's removed), and their sum;
  - cloneReencrypt: a clone's LUKS2 online reencryption to its own volume key, in MiB/s of
    the volume, beside plain `dd` writing and reading through the same mapping.
Run it where dm-crypt and LVM exist, e.g. in the test VM (give it memory: the pools live in
a tmpfs there):
  cryptvol vm run --memory 4096 --timeout 3600 -- .venv/bin/python bench/bench_snapshots.py
`--smoke` uses a 32 MiB volume with 8 MiB written: a check that the benchmark still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.csi.client import CsiClient
from cryptvol.csi.gen import csi_pb2 as pb
from support.co import MIB, Volume, create_snapshot, create_volume, from_volume
from support.driver import RunningDriver

LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          env=LVM_ENV).stdout.strip()


@contextlib.contextmanager
def thin_pool(work: Path, size_mib: int) -> Iterator[str]:
    """A volume group with a thin pool on a loop device over a sparse file: VG/THINPOOL."""
    backing = work / "pv.img"
    with open(backing, "wb") as f:
        f.truncate((size_mib + 512) * MIB)
    device = sh("losetup", "--find", "--show", str(backing))
    vg = f"cvb{uuid.uuid4().hex[:8]}"
    sh("pvcreate", "-q", device)
    sh("vgcreate", "-q", vg, device)
    sh("lvcreate", "-q", "--type", "thin-pool", "-L", f"{size_mib}m", "-n", "pool", vg)
    try:
        yield f"{vg}/pool"
    finally:
        subprocess.run(["vgremove", "-q", "-f", vg], check=False, env=LVM_ENV)
        subprocess.run(["pvremove", "-q", "-f", device], check=False, env=LVM_ENV)
        subprocess.run(["losetup", "-d", device], check=False)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def dd_mib_per_s(args: list[str], mib: int) -> float:
    took = timed(lambda: sh("dd", *args, "bs=1M", f"count={mib}", "status=none"))
    return mib / took


def condition(vol: Volume) -> str:
    return vol.csi.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=str(vol.target))).volume_condition.message


POOLS = {"files": "loop", "thin": "lvmthin"}


def bench_pool(csi: CsiClient, work: Path, pool: str, size: int, written: int,
               snapshots: int) -> None:
    kind = POOLS[pool]
    params = {"pool": pool}
    src = create_volume(csi, work, f"src-{kind}", "block", size=size, parameters=params)
    src.stage()
    src.publish()
    sh("dd", "if=/dev/urandom", f"of={src.target}", "bs=1M", f"count={written // MIB}",
       "oflag=direct", "status=none")
    thin = pool == "thin"
    if not thin:
        src.release()  # a copy of the bytes is taken only of a volume not in use
    print(f"snapshots: pool {kind} ({'thin snapshots and clones' if thin else 'byte copies'})"
          f": volume {size // MIB} MiB, {written // MIB} MiB written", flush=True)

    took = [timed(lambda i=i: create_snapshot(csi, f"snap-{kind}-{i}", src.volume_id))
            for i in range(snapshots)]
    print(f"  CreateSnapshot: {statistics.median(took):.2f} s median of {snapshots} "
          f"({', '.join(f'{t:.2f}' for t in took)})", flush=True)

    clone: list[Volume] = []
    created = timed(lambda: clone.append(create_volume(
        csi, work, f"clone-{kind}", "block", size=size, parameters=params,
        source=from_volume(src.volume_id))))
    staged = timed(clone[0].stage)
    print(f"  clone, first stage: CreateVolume {created:.2f} s + first NodeStageVolume "
          f"{staged:.2f} s = {created + staged:.2f} s", flush=True)
    clone[0].unstage()
    clone[0].delete()

    rclone = create_volume(csi, work, f"reencrypt-{kind}", "block", size=size,
                           parameters={**params, "cloneReencrypt": "true"},
                           source=from_volume(src.volume_id))
    rclone.stage()
    rclone.publish()
    started = time.perf_counter()
    while "new volume key" in condition(rclone):
        time.sleep(0.5)
    took_s = time.perf_counter() - started
    mapping = str(rclone.target)
    dd_write = dd_mib_per_s(["if=/dev/zero", f"of={mapping}", "oflag=direct"], written // MIB)
    dd_read = dd_mib_per_s([f"if={mapping}", "of=/dev/null", "iflag=direct"], written // MIB)
    print(f"  cloneReencrypt: {size // MIB} MiB in {took_s:.1f} s = "
          f"{size / MIB / took_s:.1f} MiB/s; dd through the same mapping: write "
          f"{dd_write:.1f} MiB/s, read {dd_read:.1f} MiB/s", flush=True)
    rclone.release()
    rclone.delete()
    for _ in range(snapshots):
        snapshot_id = csi.controller.ListSnapshots(pb.ListSnapshotsRequest(
            source_volume_id=src.volume_id)).entries[0].snapshot.snapshot_id
        csi.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot_id))
    if thin:
        src.release()
    src.delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--written-mib", type=int, default=512)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="a 32 MiB volume with 8 MiB written, one snapshot")
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.written_mib, args.snapshots = 32, 8, 1
    size, written = args.size_mib * MIB, args.written_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        work = Path(tmp)
        in_vm = os.environ.get("CRYPTVOL_IN_VM") == "1"
        if in_vm:
            # The guest's /tmp is a small tmpfs; a tmpfs only uses memory for what is written.
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200G", "tmpfs", tmp],
                           check=True)
        try:
            with thin_pool(work, 3 * args.size_mib + 256) as location:
                driver = RunningDriver(work / "driver", pool_args=[
                    "--pool", f"files=loop:{work / 'files'}",
                    "--pool", f"thin=lvmthin:{location}"])
                driver.work.mkdir()
                csi = driver.start()
                try:
                    for pool in POOLS:
                        bench_pool(csi, work, pool, size, written, args.snapshots)
                finally:
                    driver.stop()
        finally:
            if in_vm:
                subprocess.run(["umount", "--lazy", tmp], check=False)


if __name__ == "__main__":
    main()
