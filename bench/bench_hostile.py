#!/usr/bin/env python3
"""Hostile paths against every node RPC of a real driver: how many were tried per RPC, and
how many got the right code with nothing changed.

Runs the table of tests/support/hostile.py (symlinks, `..`, relative paths, paths outside
--kubelet-dir, NUL bytes, over-long paths, regular files, a stranger's tmpfs mount, and an
unknown volume id over someone's file or mount) on this host, against a volume that exists
and is not staged. Needs root (it mounts a tmpfs). Prints one line per RPC and the total.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support import hostile
from support.driver import RunningDriver

MIB = 1024 * 1024


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        root = Path(tmp)
        driver = RunningDriver(root / "driver", kubelet_dir=root)
        driver.work.mkdir()
        csi = driver.start()
        scene_dir = root / "pods"
        scene_dir.mkdir()
        scene = hostile.make_scene(scene_dir, driver.state_dir)
        tried: Counter[str] = Counter()
        right: Counter[str] = Counter()
        wrong: list[str] = []
        try:
            volume = csi.controller.CreateVolume(pb.CreateVolumeRequest(
                name="existing", volume_capabilities=[mount_capability("ext4")],
                capacity_range=pb.CapacityRange(required_bytes=32 * MIB))).volume
            roots = (scene.tmp, scene.outside, driver.state_dir, driver.pool_dir)
            for case in hostile.cases():
                before = hostile.snapshot(*roots)
                code, _ = hostile.call(
                    csi.node, case, hostile.request(case, scene, volume.volume_id))
                unchanged = hostile.snapshot(*roots) == before
                tried[case.rpc] += 1
                if code == case.code and unchanged:
                    right[case.rpc] += 1
                else:
                    wrong.append(f"{case.id}: got {code.name}"
                                 f"{'' if unchanged else ', and something changed'}")
        finally:
            scene.teardown()
            driver.stop()
    for rpc in tried:
        print(f"{rpc:<22} {tried[rpc]:3d} hostile inputs, {right[rpc]:3d} right code with "
              "nothing changed")
    print(f"{'total':<22} {sum(tried.values()):3d} hostile inputs, {sum(right.values()):3d} "
          "right code with nothing changed")
    for line in wrong:
        print(f"  wrong: {line}")


if __name__ == "__main__":
    main()
