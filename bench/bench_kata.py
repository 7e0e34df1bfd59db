#!/usr/bin/env python3
"""NodePublishVolume of a Kata direct volume beside an ordinary publish of the same volume.

Runs where dm-crypt exists: `cryptvol vm run -- .venv/bin/python bench/bench_kata.py`
(`--smoke` for a 3-round check). One ext4 volume is staged once; then, each p50/p95 over
the rounds:
  host         ordinary publish (bind mount of the staging mount), no pod named;
  host+pod     ordinary publish naming a runc pod: the runtime-class trigger reads the Pod;
  direct       publish naming a Kata pod: Pod and RuntimeClass read, mountInfo.json
               written, nothing mounted; the first one also releases the staging mount
               (printed on its own).
The Kubernetes API is a stand-in on loopback (tests/support/kube_api.py): a real API server
cannot run here, so its reads cost what a loopback HTTP round trip costs, not a cluster's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.vm import IN_VM_ENV
from support.co import MIB, create_volume
from support.driver import RunningDriver
from support.kube_api import FakeKubeApi


def _ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _line(name: str, values: list[float]) -> str:
    p95 = statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]
    return (f"kata: {name:<30} p50 {statistics.median(values):6.1f} ms  "
            f"p95 {p95:6.1f} ms  ({len(values)} rounds)")


def main(rounds: int) -> None:
    if os.environ.get(IN_VM_ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    api = FakeKubeApi(token="bench-token")
    api.add_pod("apps", "runc-pod")
    api.add_pod("apps", "kata-pod", runtime_class="kata")
    api.add_runtime_class("kata", "kata-qemu")
    with tempfile.TemporaryDirectory(prefix="cvk-") as tmp:
        work = Path(tmp)
        driver = RunningDriver(work / "driver", extra_args=[
            "--kubeconfig", str(api.kubeconfig(work / "kubeconfig")),
            "--kata-direct-volumes-dir", str(work / "direct-volumes"),
            "--kata-sandbox-dirs", f"{work}/sbs,{work}/kata",
        ])
        driver.work.mkdir()
        client = driver.start()
        try:
            vol = create_volume(client, work, "bench-kata", "ext4", size=256 * MIB)
            vol.stage()

            def publish(pod: str | None) -> Callable[[], object]:
                request = vol.publish_request()
                if pod is not None:
                    request.volume_context.update({"csi.storage.k8s.io/pod.name": pod,
                                                   "csi.storage.k8s.io/pod.namespace": "apps"})
                return lambda: client.node.NodePublishVolume(request)

            results: dict[str, list[float]] = {}

            def measure(name: str, pod: str | None) -> None:
                pubs = results.setdefault(f"NodePublish {name}", [])
                unpubs = results.setdefault(f"NodeUnpublish {name}", [])
                for _ in range(rounds):
                    pubs.append(_ms(publish(pod)))
                    unpubs.append(_ms(vol.unpublish))

            publish(None)()  # warm-up: first RPCs, first reads of the API
            vol.unpublish()
            measure("host", None)
            measure("host+pod", "runc-pod")
            first = _ms(publish("kata-pod"))
            vol.unpublish()
            measure("direct", "kata-pod")
            print(f"kata: first direct publish (releases the staging mount): {first:.1f} ms")
            for name in ("NodePublish host", "NodePublish host+pod", "NodePublish direct",
                         "NodeUnpublish host", "NodeUnpublish host+pod",
                         "NodeUnpublish direct"):
                print(_line(name, results[name]))
            vol.unstage()
            vol.delete()
        finally:
            driver.stop()
            api.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="3 rounds: does it run at all")
    args = parser.parse_args()
    main(3 if args.smoke else args.rounds)
