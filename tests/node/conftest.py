"""Fixtures for node tests: real block devices on the real kernel (the VM's, here).

Everything lives under pytest's tmp_path, which is the guest's tmpfs: the host root is
read-only inside the VM, and sparse files cost memory only for what is written.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cryptvol.system import run
from cryptvol.system.runner import CommandError
from cryptvol.vm import VmUnavailable
from support.zfs import ZfsTestPool, zfs_test_pool

MIB = 1024 * 1024
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


@pytest.fixture
def make_loop_device(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Make loop devices over sparse files: `make_loop_device(size_bytes) -> "/dev/loopN"`.

    Each is detached (and its file removed) when the test ends, whatever it left open.
    """
    attached: list[tuple[str, Path]] = []

    def make(size: int) -> str:
        backing = tmp_path / f"loop-{len(attached)}-{uuid.uuid4().hex[:8]}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        device = run(["losetup", "--find", "--show", str(backing)], timeout=30).stdout.strip()
        attached.append((device, backing))
        return device

    yield make
    for device, backing in reversed(attached):
        with contextlib.suppress(CommandError):
            run(["losetup", "-d", device], timeout=30)
        with contextlib.suppress(OSError):
            os.unlink(backing)


@pytest.fixture
def loop_device(make_loop_device: Callable[[int], str]) -> str:
    """One 512 MiB loop device (xfs needs 300 MiB at least) over a sparse file."""
    return make_loop_device(512 * MIB)


@pytest.fixture
def mapper_names() -> Iterator[Callable[[str], str]]:
    """Unique dm-crypt mapping names; any still open when the test ends is closed."""
    names: list[str] = []

    def name(hint: str) -> str:
        made = f"cvt-{hint}-{uuid.uuid4().hex[:8]}"
        names.append(made)
        return made

    yield name
    for made in reversed(names):
        if Path(f"/dev/mapper/{made}").exists():
            with contextlib.suppress(CommandError):
                run(["cryptsetup", "close", made], timeout=60)


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty folder to mount on; unmounted at the end if a test left it mounted."""
    target = tmp_path / "mnt"
    target.mkdir()
    yield target
    if os.path.ismount(target):
        with contextlib.suppress(CommandError):
            run(["umount", str(target)], timeout=60)


@pytest.fixture(scope="session")
def zfs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsTestPool]:
    """A real zpool for the whole session, with a plain and an encrypted dataset (see
    support.zfs). Where ZFS cannot be loaded this skips, except in CI, where it fails."""
    with contextlib.ExitStack() as stack:
        try:
            pool = stack.enter_context(zfs_test_pool(tmp_path_factory.mktemp("zfs")))
        except (VmUnavailable, CommandError) as exc:
            if os.environ.get("CI"):
                pytest.fail(f"ZFS is not usable in the test VM, and CI must not skip: {exc}")
            pytest.skip(f"ZFS is not usable here: {exc}")
        yield pool


@pytest.fixture(scope="session")
def thin_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An LVM volume group with a thin pool, on a loop device over a sparse file in the
    guest's tmpfs: what an lvmthin pool is configured with ("VG/THINPOOL"). The session
    driver's pool is VG/pool; the group has room for a small thin pool of a test's own."""
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
