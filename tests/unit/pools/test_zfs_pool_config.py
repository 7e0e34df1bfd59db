"""A ZFS pool is configured as NAME=zfs:POOL/DATASET and opened without touching ZFS; its
names for volumes and snapshots cannot collide with the driver's own hidden ones."""

from __future__ import annotations

import pytest

from cryptvol.errors import InvalidArgument, NotFound
from cryptvol.pools import zfs, zvol_devices
from cryptvol.pools.registry import open_pools, parse_pool_spec


def test_a_zfs_pool_is_opened_from_its_dataset_name_alone() -> None:
    (pool,) = open_pools([parse_pool_spec("z=zfs:tank/cryptvol")]).all()
    assert (pool.name, pool.kind, pool.location) == ("z", "zfs", "tank/cryptvol")
    caps = pool.capabilities
    assert (caps.snapshot, caps.clone, caps.online_expand) == ("thin", "thin", True)
    assert pool.encryption is not None


@pytest.mark.parametrize("location", ["/tank/x", "tank//x", "tank/x@snap", "tank/x#b", "tank/"])
def test_a_location_that_is_no_dataset_name_is_refused(location: str) -> None:
    with pytest.raises(InvalidArgument, match="dataset name like tank/cryptvol"):
        open_pools([parse_pool_spec(f"z=zfs:{location}")])


def test_volume_and_snapshot_names_live_under_the_dataset() -> None:
    ds = zfs.ZfsDataset("z", "tank/cryptvol")
    assert ds.volume("cv-1") == "tank/cryptvol/cv-1"
    assert ds.snapshot("cv-1", "snap-1") == "tank/cryptvol/cv-1@snap-1"
    # Ids never hold ':', which marks the driver's own hidden datasets.
    for bad in ("cv:deleted:1", "../x", "a/b", ""):
        with pytest.raises(NotFound):
            ds.volume(bad)
    assert ds.is_hidden("tank/cryptvol/cv-1:deleted:123")
    assert not ds.is_hidden("tank/cryptvol/cv-1")


def test_blkzname_is_the_ioctl_zfs_defines() -> None:
    # _IOR(0x12, 125, char[256]) as <sys/fs/zfs.h> defines it.
    assert zvol_devices.BLKZNAME == 0x8100127D
