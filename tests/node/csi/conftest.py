import contextlib
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cryptvol.mounts.direct_volumes import DirectVolumes
from cryptvol.system import run
from cryptvol.system.runner import CommandError
from cryptvol.vm import IN_VM_ENV
from support.driver import RunningDriver
from support.kube_api import FakeKubeApi
from support.pools import POOLS

MIB = 1024 * 1024
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


@pytest.fixture(scope="session")
def thin_pool(tmp_path_factory):
    """An LVM volume group with a thin pool, on a loop device over a sparse file in the
    guest's tmpfs: what an lvmthin pool is configured with ("VG/THINPOOL")."""
    backing = tmp_path_factory.mktemp("lvm") / "pv.img"
    with open(backing, "wb") as f:
        f.truncate(4096 * MIB)
    device = run(["losetup", "--find", "--show", str(backing)], timeout=60).stdout.strip()
    vg = f"cvt{uuid.uuid4().hex[:8]}"
    for argv in (["pvcreate", "-q", device], ["vgcreate", "-q", vg, device],
                 ["lvcreate", "-q", "--type", "thin-pool", "-L", "3G", "-n", "pool", vg]):
        run(argv, env=LVM_ENV, timeout=300)
    yield vg
    for argv in (["vgremove", "-q", "-f", vg], ["pvremove", "-q", "-f", device],
                 ["losetup", "-d", device]):
        with contextlib.suppress(CommandError):
            run(argv, env=LVM_ENV, timeout=300)


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
    ZFS pool) and Kata direct volumes through a stand-in API. Crash tests restart it and
    leave it running again."""
    work = tmp_path_factory.mktemp("driver")
    running = RunningDriver(work, pool_args=[
        "--pool", f"{POOLS['loop']}=loop:{work / 'pool'}",
        "--pool", f"{POOLS['lvmthin']}=lvmthin:{thin_pool}/pool",
        "--pool", zfs_pool.spec(POOLS["zfs"]),
    ], extra_args=[
        "--kubeconfig", str(kata.api.kubeconfig(work / "kubeconfig")),
        "--kata-direct-volumes-dir", str(kata.volumes.root),
        "--kata-sandbox-dirs", f"{kata.go_sandboxes},{kata.rs_sandboxes}",
    ])
    running.start()
    yield running
    running.stop()


@pytest.fixture
def csi(driver):
    return driver.client
