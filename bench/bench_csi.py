#!/usr/bin/env python3
"""CSI benchmarks against a real driver over its unix socket.

  controller  CreateVolume+DeleteVolume pairs per second with 1 and 8 concurrent clients
              (target: at least 100 pairs/s with 8 clients on a 2-core machine).
  node        NodeStageVolume / NodeUnstageVolume latency p50 and p95 on real dm-crypt
              (run it where dm-crypt exists: `cryptvol vm run -- .venv/bin/python
              bench/bench_csi.py node`).
  expand      one online NodeExpandVolume (+1 GiB) for ext4 and xfs volumes of 1, 8 and
              64 GiB (sparse), on real dm-crypt (in the VM as above).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver

MIB = 1024 * 1024


def controller(pairs: int, clients_list: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        driver = RunningDriver(Path(tmp))
        driver.start()
        try:
            for clients in clients_list:
                per_client = pairs // clients
                barrier = threading.Barrier(clients)

                def worker(index: int, n: int = per_client, c: int = clients,
                           gate: threading.Barrier = barrier) -> None:
                    from cryptvol.csi.client import CsiClient

                    client = CsiClient(driver.endpoint)
                    cap = mount_capability("ext4")
                    gate.wait()
                    for i in range(n):
                        vol = client.controller.CreateVolume(pb.CreateVolumeRequest(
                            name=f"bench-{c}-{index}-{i}", volume_capabilities=[cap],
                            capacity_range=pb.CapacityRange(required_bytes=64 * MIB)))
                        client.controller.DeleteVolume(
                            pb.DeleteVolumeRequest(volume_id=vol.volume.volume_id))
                    client.close()

                threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                took = time.perf_counter() - start
                done = per_client * clients
                print(f"controller: {clients} client(s): {done} create+delete pairs in "
                      f"{took:.2f} s = {done / took:.1f} pairs/s")
        finally:
            driver.stop()


def node(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        work = Path(tmp)
        driver = RunningDriver(work / "driver")
        driver.work.mkdir()
        client = driver.start()
        try:
            cap = mount_capability("ext4")
            vol = client.controller.CreateVolume(pb.CreateVolumeRequest(
                name="bench-node", volume_capabilities=[cap],
                capacity_range=pb.CapacityRange(required_bytes=256 * MIB))).volume
            staging = work / "staging"
            staging.mkdir()
            stage_req = pb.NodeStageVolumeRequest(volume_id=vol.volume_id,
                                                  staging_target_path=str(staging),
                                                  volume_capability=cap)
            unstage_req = pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id,
                                                      staging_target_path=str(staging))
            first = time.perf_counter()
            client.node.NodeStageVolume(stage_req)
            print(f"node: first NodeStageVolume (luksFormat + mkfs): "
                  f"{(time.perf_counter() - first) * 1000:.0f} ms")
            client.node.NodeUnstageVolume(unstage_req)
            stages, unstages = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                client.node.NodeStageVolume(stage_req)
                stages.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                client.node.NodeUnstageVolume(unstage_req)
                unstages.append((time.perf_counter() - t) * 1000)
            for name, values in (("NodeStageVolume", stages), ("NodeUnstageVolume", unstages)):
                q = statistics.quantiles(values, n=20)
                print(f"node: {name}: p50 {statistics.median(values):.0f} ms, "
                      f"p95 {q[18]:.0f} ms over {rounds} rounds")
            client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
        finally:
            driver.stop()


def expand(sizes_gib: list[int]) -> None:
    import os
    import subprocess

    from support.co import create_volume

    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        work = Path(tmp)
        if os.environ.get("CRYPTVOL_IN_VM") == "1":
            # The guest's /tmp is a small tmpfs; the pool refuses volumes larger than its
            # free space, sparse or not. A tmpfs only uses memory for what is written.
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200G", "tmpfs", tmp],
                           check=True)
        driver = RunningDriver(work / "driver")
        driver.work.mkdir()
        client = driver.start()
        try:
            for fs in ("ext4", "xfs"):
                for gib in sizes_gib:
                    vol = create_volume(client, work, f"grow-{fs}-{gib}", fs,
                                        size=gib * 1024 * MIB)
                    vol.stage()
                    vol.publish()
                    vol.write(size=MIB)
                    target = (gib + 1) * 1024 * MIB
                    t = time.perf_counter()
                    client.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
                        volume_id=vol.volume_id, volume_path=str(vol.target),
                        capacity_range=pb.CapacityRange(required_bytes=target)))
                    took = (time.perf_counter() - t) * 1000
                    print(f"expand: {fs} {gib} GiB -> {gib + 1} GiB online NodeExpandVolume: "
                          f"{took:.0f} ms")
                    vol.unpublish()
                    vol.unstage()
                    vol.delete()
        finally:
            driver.stop()
            if os.environ.get("CRYPTVOL_IN_VM") == "1":
                subprocess.run(["umount", "--lazy", tmp], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["controller", "node", "expand"])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    if args.what == "controller":
        controller(args.pairs, [1, 8])
    elif args.what == "node":
        node(args.rounds)
    else:
        expand(args.sizes_gib)


if __name__ == "__main__":
    main()
