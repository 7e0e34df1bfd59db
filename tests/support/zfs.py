"""A real ZFS pool for node tests, in the VM or on a host with ZFS.

The zpool lives on a loop device over a sparse file in the guest's tmpfs (a file on 9p does
not work as a vdev). Under it: a plain dataset and one with native encryption (a raw key in
a file), which pools are configured on (`--pool z=zfs:tank/cryptvol`). Engine tests for
any pool kind can take the `zfs_pool` session fixture (tests/node/conftest.py) and use
`spec()` to configure a driver.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptvol.system import run
from cryptvol.system.runner import CommandError
from cryptvol.vm import zfs_module

GIB = 1024**3
ZPOOL = "tank"


@dataclass(frozen=True)
class ZfsTestPool:
    zpool: str
    # A dataset without encryption of its own, and an encryption root (aes-256-gcm).
    plain: str
    encrypted: str
    key_file: Path
    work: Path

    def spec(self, name: str = "z", *, encrypted: bool = False) -> str:
        """A `--pool` value for a driver: NAME=zfs:DATASET."""
        return f"{name}=zfs:{self.encrypted if encrypted else self.plain}"

    def dataset_of_its_own(self, label: str) -> str:
        """A new plain dataset beside the two, for a driver that lives beside others: each
        driver's store marks its pools as its own (`io.cryptvol:store-id`), and refuses a
        pool another store marked."""
        name = f"{self.zpool}/{label}"
        zfs("create", "-p", name)
        return name

    def new_key(self, label: str) -> Path:
        """A fresh 32-byte raw key file (keyformat=raw) for another encryption root."""
        path = self.work / f"{label}.key"
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
        return path

    def encryption_root(self, dataset: str, key: Path) -> str:
        """Make `dataset` a new encryption root with the key in `key`."""
        zfs("create", "-o", "encryption=aes-256-gcm", "-o", "keyformat=raw",
            "-o", f"keylocation=file://{key}", dataset)
        return dataset


def zfs(*args: str) -> str:
    return run(["zfs", *args], timeout=300).stdout


def zfs_get(dataset: str, prop: str) -> str:
    return zfs("get", "-Hp", "-o", "value", prop, dataset).strip()


def datasets_under(dataset: str) -> list[str]:
    """Every dataset and snapshot below `dataset` (not itself)."""
    out = zfs("list", "-H", "-o", "name", "-t", "all", "-r", dataset)
    return [n for n in out.split() if n != dataset]


@contextlib.contextmanager
def zfs_test_pool(work: Path, size: int = 2 * GIB, zpool: str = ZPOOL) -> Iterator[ZfsTestPool]:
    """Load ZFS, make the zpool and its two datasets; destroy the zpool afterwards. A
    benchmark beside the test session's pool names its own `zpool`."""
    zfs_module.load()
    backing = work / "zpool.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    device = run(["losetup", "--find", "--show", str(backing)], timeout=30).stdout.strip()
    try:
        run(["zpool", "create", "-f", "-m", "none", "-o", "cachefile=none", zpool, device],
            timeout=300)
        try:
            key = work / f"{zpool}-enc.key"
            key.write_bytes(os.urandom(32))
            key.chmod(0o600)
            pool = ZfsTestPool(zpool, f"{zpool}/cryptvol", f"{zpool}/enc", key, work)
            zfs("create", pool.plain)
            pool.encryption_root(pool.encrypted, key)
            yield pool
        finally:
            with contextlib.suppress(CommandError):
                run(["zpool", "destroy", "-f", zpool], timeout=300)
    finally:
        with contextlib.suppress(CommandError):
            run(["losetup", "-d", device], timeout=30)
        backing.unlink(missing_ok=True)
