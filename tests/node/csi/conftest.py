import subprocess

import pytest

from support.driver import RunningDriver

TINY_POOL_BYTES = 96 * 1024 * 1024


@pytest.fixture(scope="session")
def driver(tmp_path_factory):
    """One driver for the node suite: starting Python under an emulated CPU costs seconds,
    so tests share it; each uses its own volume names. Crash tests restart it and leave it
    running again.

    Its pools: `default` on the guest's /tmp, and `tiny`, a 96 MiB tmpfs for tests that
    fill a pool. The suite's volumes are sparse and mostly empty, so the driver may promise
    four times what the pools hold (--overcommit-ratio; its limit is tested on the host)."""
    work = tmp_path_factory.mktemp("driver")
    tiny = tmp_path_factory.mktemp("tiny-pool")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_POOL_BYTES},mode=0700", "tiny",
                    str(tiny)], check=True)
    running = RunningDriver(work, pool_args=["--pool", f"default=loop:{work}/pool",
                                             "--pool", f"tiny=loop:{tiny}"],
                            extra_args=["--overcommit-ratio", "4"])
    running.tiny_pool_dir = tiny
    running.start()
    yield running
    running.stop()
    subprocess.run(["umount", "--lazy", str(tiny)], check=False)


@pytest.fixture
def csi(driver):
    return driver.client
