import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cryptvol.mounts.direct_volumes import DirectVolumes
from cryptvol.vm import IN_VM_ENV
from support.driver import RunningDriver
from support.kube_api import FakeKubeApi
from support.pools import POOLS, TINY, TINY_POOL_BYTES


@dataclass(frozen=True)
class KataNode:
    """What the session driver knows of Kata: its stand-in Kubernetes API and the folders a
    Kata runtime would use on this node."""

    api: FakeKubeApi
    volumes: DirectVolumes
    go_sandboxes: Path
    rs_sandboxes: Path


@pytest.fixture(scope="session")
def kata(tmp_path_factory):
    """A stand-in Kubernetes API on loopback (the real API server cannot run here; see
    tests/support/kube_api.py) and Kata's folders for the session driver. The VM boots with
    its loopback down."""
    if os.environ.get(IN_VM_ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    api = FakeKubeApi(token="node-sa-token")
    # Short: shim sockets live at <dir>/<64-character sandbox id>/shim-monitor.sock and a
    # unix socket path must fit in 108 bytes.
    sandboxes = Path(tempfile.mkdtemp(prefix="kn", dir="/tmp"))
    yield KataNode(api, DirectVolumes(tmp_path_factory.mktemp("kata") / "direct-volumes"),
                   sandboxes / "sbs", sandboxes / "kata")
    api.stop()


@pytest.fixture(scope="session")
def driver(tmp_path_factory, kata, thin_pool, zfs_pool):
    """One driver for the node suite: starting Python under an emulated CPU costs seconds,
    so tests share it; each uses its own volume names. It serves the pools of
    support.pools.POOLS (a loop pool in driver.pool_dir, the default; an LVM thin pool; a
    ZFS pool), `tiny` (a 96 MiB tmpfs loop pool for tests that fill a pool) and Kata direct
    volumes through a stand-in API. Crash tests restart it and leave it running again.

    The suite's volumes are sparse and mostly empty, so the driver may promise four times
    what the pools hold (--overcommit-ratio; its limit is tested on the host)."""
    work = tmp_path_factory.mktemp("driver")
    tiny = tmp_path_factory.mktemp("tiny-pool")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_POOL_BYTES},mode=0700", "tiny",
                    str(tiny)], check=True)
    running = RunningDriver(work, pool_args=[
        "--pool", f"{POOLS['loop']}=loop:{work / 'pool'}",
        "--pool", f"{POOLS['lvmthin']}=lvmthin:{thin_pool}/pool",
        "--pool", f"{POOLS['zfs']}=zfs:{zfs_pool.dataset_of_its_own('session')}",
        "--pool", f"{TINY}=loop:{tiny}",
    ], extra_args=[
        "--overcommit-ratio", "4",
        "--kubeconfig", str(kata.api.kubeconfig(work / "kubeconfig")),
        "--kata-direct-volumes-dir", str(kata.volumes.root),
        "--kata-sandbox-dirs", f"{kata.go_sandboxes},{kata.rs_sandboxes}",
    ])
    running.tiny_pool_dir = tiny
    running.start()
    yield running
    running.stop()
    subprocess.run(["umount", "--lazy", str(tiny)], check=False)


@pytest.fixture
def csi(driver):
    return driver.client
