"""The real driver on ZFS pools (`--pool z=zfs:tank/cryptvol`): a volume's whole life on a
zvol, on a plain and on a natively encrypted dataset, and a pool whose key is not loaded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from cryptvol.csi.client import CsiClient
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.pools.zfs import STORE_PROPERTY
from cryptvol.pools.zvol_devices import ZvolDevices
from support.co import MIB, capability, create_volume
from support.driver import RunningDriver
from support.zfs import ZfsTestPool, datasets_under, zfs, zfs_get


@pytest.fixture(scope="module")
def locked_root(zfs_pool: ZfsTestPool) -> Iterator[str]:
    root = zfs_pool.encryption_root(f"{zfs_pool.zpool}/locked-driver",
                                    zfs_pool.new_key("locked-driver"))
    zfs("unload-key", root)
    yield root
    zfs("destroy", "-r", root)


@pytest.fixture(scope="module")
def zfs_driver(tmp_path_factory: pytest.TempPathFactory, zfs_pool: ZfsTestPool,
               locked_root: str) -> Iterator[RunningDriver]:
    running = RunningDriver(
        tmp_path_factory.mktemp("zfs-driver"),
        pool_args=["--pool", zfs_pool.spec("z"),
                   "--pool", zfs_pool.spec("ze", encrypted=True),
                   "--pool", f"locked=zfs:{locked_root}"],
    )
    running.start()
    yield running
    running.stop()
    # Its store marked the two shared datasets as its own; later tests start other stores.
    for dataset in (zfs_pool.plain, zfs_pool.encrypted):
        zfs("inherit", STORE_PROPERTY, dataset)


@pytest.mark.parametrize(("pool", "kind"), [("z", "ext4"), ("ze", "block")])
def test_a_zvol_volume_lives_its_whole_life_and_keeps_its_data(
    zfs_driver: RunningDriver, zfs_pool: ZfsTestPool, tmp_path, pool: str, kind: str
) -> None:
    csi = zfs_driver.client
    assert csi is not None
    vol = create_volume(csi, tmp_path, f"zfs-life-{pool}", kind, parameters={"pool": pool})
    dataset = zfs_pool.encrypted if pool == "ze" else zfs_pool.plain
    zvol = f"{dataset}/{vol.volume_id}"
    assert zfs_get(zvol, "volsize") == str(64 * MIB + 16 * MIB)  # + the LUKS2 header
    vol.stage()
    vol.publish()
    marker = b"ZVOL-MARKER-" + uuid.uuid4().hex.encode()
    digest = vol.write(seed=marker)
    vol.cycle(digest)

    device = ZvolDevices().find(zvol)
    assert device is not None
    with open(device, "rb") as f:
        # Raw block data starts right after the 16 MiB header: were it plaintext, the
        # marker would be there; a file in ext4 could be anywhere.
        seen = f.read(20 * MIB if kind == "block" else -1)
        assert marker not in seen, "the zvol holds only LUKS2 ciphertext"

    before = vol.size_seen()
    assert vol.expand(128 * MIB) >= 128 * MIB
    assert zfs_get(zvol, "volsize") == str(128 * MIB + 16 * MIB)
    assert vol.size_seen() > before
    assert vol.checksum() == digest

    vol.release()
    vol.delete()
    assert not [n for n in datasets_under(dataset) if vol.volume_id in n]


def test_a_pool_whose_key_is_not_loaded_is_refused_naming_zfs_load_key(
    zfs_driver: RunningDriver, locked_root: str
) -> None:
    csi: CsiClient | None = zfs_driver.client
    assert csi is not None
    with pytest.raises(grpc.RpcError) as info:
        csi.controller.CreateVolume(pb.CreateVolumeRequest(
            name="zfs-locked", volume_capabilities=[capability("ext4")],
            capacity_range=pb.CapacityRange(required_bytes=64 * MIB),
            parameters={"pool": "locked"}))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"zfs load-key {locked_root}" in (info.value.details() or "")
