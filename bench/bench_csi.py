#!/usr/bin/env python3
"""CSI benchmarks against a real driver over its unix socket.

  controller  CreateVolume+DeleteVolume pairs per second with 1 and 8 concurrent clients
              (16 MiB volumes), and the driver's CPU per pair. Goal (issue 15): with 8
              clients, at least the rate of kubernetes-csi's Go reference driver
              (csi-driver-host-path) on the same machine with the same client: build its
              `hostpathplugin` and pass `--reference-driver PATH` to run it side by side.
              Also the client's ceiling: the same client against a grpcio server that
              answers at once with fixed replies, and the driver's rate as a share of it.
              This Python client cannot drive any server faster than that.
  expand      one online NodeExpandVolume (+1 GiB) for ext4 and xfs volumes of 1, 8 and
              64 GiB (sparse), on real dm-crypt (run it where dm-crypt exists:
              `cryptvol vm run -- .venv/bin/python bench/bench_csi.py expand`).
NodeStage and NodePublish against the same steps without LUKS: bench/bench_node.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.csi.gen import csi_pb2_grpc as pb_grpc
from support.driver import RunningDriver, call_when_up

MIB = 1024 * 1024
CEILING_VOLUME_ID = "ceiling-0000"


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def create_delete_pairs(endpoint: str, pid: int, label: str, pairs: int, clients: int,
                        size: int, cpu_of: str = "server CPU") -> float:
    """Run `pairs` CreateVolume+DeleteVolume pairs from `clients` threads (one channel
    each); print pairs/s and the CPU per pair of process `pid` (`cpu_of` names what it
    counts); return pairs/s."""
    from cryptvol.csi.client import CsiClient

    per_client = max(1, pairs // clients)
    gate = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        with CsiClient(endpoint) as client:
            cap = mount_capability("ext4")
            gate.wait()
            try:
                for i in range(per_client):
                    vol = client.controller.CreateVolume(pb.CreateVolumeRequest(
                        name=f"bench-{clients}-{index}-{i}", volume_capabilities=[cap],
                        capacity_range=pb.CapacityRange(required_bytes=size)))
                    client.controller.DeleteVolume(
                        pb.DeleteVolumeRequest(volume_id=vol.volume.volume_id))
            except BaseException as exc:  # reported below, after every thread ended
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    cpu, start = proc_cpu(pid), time.perf_counter()
    for t in threads:
        t.join()
    took, cpu = time.perf_counter() - start, proc_cpu(pid) - cpu
    if errors:
        raise errors[0]
    done = per_client * clients
    print(f"controller: {label:<9} {clients} client(s): {done} create+delete pairs in "
          f"{took:5.2f} s = {done / took:7.1f} pairs/s, {cpu_of} {cpu / done * 1000:.2f} ms "
          "per pair", flush=True)
    return done / took


class ReferenceDriver:
    """The Go reference driver (kubernetes-csi's csi-driver-host-path, `hostpathplugin`)
    from a binary the user built: run beside cryptvol, with the same client."""

    def __init__(self, binary: Path, work: Path) -> None:
        self.endpoint = f"unix://{work}/hostpath.sock"
        self.log = (work / "hostpath.log").open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "--endpoint", self.endpoint, "--nodeid", "node-1",
             "--statedir", str(work / "hostpath-state")],
            stdout=self.log, stderr=self.log)

    def __enter__(self) -> ReferenceDriver:
        from cryptvol.csi.client import CsiClient

        try:
            # Its Probe leaves `ready` unset (which CSI reads as ready): wait for an answer.
            with CsiClient(self.endpoint) as client:
                call_when_up(lambda: client.identity.Probe(pb.ProbeRequest(), timeout=5), 60)
        except grpc.RpcError:
            self.__exit__()
            raise RuntimeError("the reference driver did not start: "
                               + Path(self.log.name).read_text()[-2000:]) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class _FixedReplies(pb_grpc.ControllerServicer):  # type: ignore[misc]
    """CreateVolume and DeleteVolume answered at once with fixed, valid replies."""

    def __init__(self, size: int) -> None:
        self.created = pb.CreateVolumeResponse(volume=pb.Volume(
            volume_id=CEILING_VOLUME_ID, capacity_bytes=size))
        self.deleted = pb.DeleteVolumeResponse()

    def CreateVolume(self, request: pb.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> pb.CreateVolumeResponse:
        return self.created

    def DeleteVolume(self, request: pb.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> pb.DeleteVolumeResponse:
        return self.deleted


def ceiling(work: Path, pairs: int, clients: int, size: int) -> float:
    """Pairs/s of the bench's client against a grpcio server in this process that does
    nothing but answer (as many workers as the driver's server): what this client can
    drive at most."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ControllerServicer_to_server(_FixedReplies(size), server)
    endpoint = f"unix://{work}/ceiling.sock"
    server.add_insecure_port(endpoint)
    server.start()
    try:
        return create_delete_pairs(endpoint, os.getpid(), "ceiling", pairs, clients, size,
                                   cpu_of="client + server CPU")
    finally:
        server.stop(None).wait()


def controller(pairs: int, clients_list: list[int], size: int,
               reference: Path | None) -> None:
    print(f"controller: {size // MIB} MiB volumes, load average {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        # The driver as deployed: info logging, one line per RPC.
        driver = RunningDriver(Path(tmp), log_level="info")
        driver.start()
        try:
            assert driver.proc is not None
            ours = {c: create_delete_pairs(driver.endpoint, driver.proc.pid, "cryptvol",
                                           pairs, c, size) for c in clients_list}
        finally:
            driver.stop()
        for clients in clients_list:
            most = ceiling(Path(tmp), pairs, clients, size)
            print(f"controller: {clients} client(s): cryptvol / ceiling = "
                  f"{ours[clients] / most:.2f}", flush=True)
        if reference is None:
            return
        with ReferenceDriver(reference, Path(tmp)) as go:
            for clients in clients_list:
                theirs = create_delete_pairs(go.endpoint, go.proc.pid, "hostpath", pairs,
                                             clients, size)
                print(f"controller: {clients} client(s): cryptvol / hostpath = "
                      f"{ours[clients] / theirs:.2f}", flush=True)


def expand(sizes_gib: list[int], filesystems: list[str]) -> None:
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
            for fs in filesystems:
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
    parser.add_argument("what", choices=["controller", "expand"])
    parser.add_argument("--pairs", type=int, default=400, help="pairs per client count")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--reference-driver", type=Path, metavar="PATH",
                        help="csi-driver-host-path's hostpathplugin binary, run beside")
    parser.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--fs", default="ext4,xfs", help="comma-separated filesystems (expand)")
    args = parser.parse_args()
    if args.what == "controller":
        controller(args.pairs, [int(c) for c in args.clients.split(",")],
                   args.size_mib * MIB, args.reference_driver)
    else:
        expand(args.sizes_gib, args.fs.split(","))


if __name__ == "__main__":
    main()
