import contextlib
import uuid

import pytest

from cryptvol.system import run
from cryptvol.system.runner import CommandError
from support.driver import RunningDriver
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


@pytest.fixture(scope="session")
def driver(tmp_path_factory, thin_pool):
    """One driver for the node suite: starting Python under an emulated CPU costs seconds,
    so tests share it; each uses its own volume names. It serves the pools of
    support.pools.POOLS: a loop pool in driver.pool_dir (the default) and an LVM thin pool.
    Crash tests restart it and leave it running again."""
    work = tmp_path_factory.mktemp("driver")
    running = RunningDriver(work, pool_args=[
        "--pool", f"{POOLS['loop']}=loop:{work / 'pool'}",
        "--pool", f"{POOLS['lvmthin']}=lvmthin:{thin_pool}/pool",
    ])
    running.start()
    yield running
    running.stop()


@pytest.fixture
def csi(driver):
    return driver.client
