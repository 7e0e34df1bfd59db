"""Capacity and condition are true: a pool promises at most its size times the over-commit
ratio, GetCapacity says what it can still promise, and the controller reports a volume
whose backing volume or key is gone.

Seen before: a 64 MiB pool accepted six 40 MiB volumes; the third stage failed with an mkfs
I/O error and writes then got EIO."""

import subprocess

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver

MIB = 1024 * 1024
HEADER = 16 * MIB


@pytest.fixture
def small_pool(tmp_path):
    pool = tmp_path / "small"
    pool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "small", str(pool)],
                   check=True)
    yield pool
    subprocess.run(["umount", str(pool)], check=False)


def create(csi, name, size=40 * MIB):
    return csi.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability("ext4")],
        capacity_range=pb.CapacityRange(required_bytes=size))).volume


def capacity(csi) -> int:
    return csi.controller.GetCapacity(pb.GetCapacityRequest()).available_capacity


@pytest.mark.parametrize(("ratio", "fit"), [("1.0", 1), ("2.5", 2)])
def test_a_pool_promises_at_most_its_size_times_the_ratio(tmp_path, small_pool, ratio, fit):
    driver = RunningDriver(tmp_path, pool_args=["--pool", f"small=loop:{small_pool}"],
                           extra_args=["--overcommit-ratio", ratio])
    csi = driver.start()
    try:
        # The pool's own marker file takes a page of the 64 MiB.
        assert abs(capacity(csi) - (int(64 * MIB * float(ratio)) - HEADER)) < 64 * 1024
        made = []
        for i in range(6):
            try:
                made.append(create(csi, f"v{i}"))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "may promise" in exc.details()
                break
        assert len(made) == fit
        left = int(64 * MIB * float(ratio)) - fit * (40 * MIB + HEADER)
        assert abs(capacity(csi) - max(0, left - HEADER)) < 64 * 1024
        # What GetCapacity offers can be had, and nothing more.
        if capacity(csi) >= 16 * MIB:
            create(csi, "rest", size=capacity(csi) // MIB * MIB)
            assert capacity(csi) < MIB
        csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=made[0].volume_id))
        create(csi, "after-delete")
    finally:
        driver.stop()


def test_the_controller_reports_a_volume_whose_backing_volume_or_key_is_gone(csi, driver):
    offered = {c.rpc.type for c in csi.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    assert pb.ControllerServiceCapability.RPC.VOLUME_CONDITION in offered
    fine, unbacked, keyless = (create(csi, n).volume_id for n in ("fine", "unbacked", "keyless"))
    (driver.pool_dir / f"{unbacked}.img").unlink()
    from cryptvol.keys.keyset import dek_key
    from cryptvol.store.base import Delete
    from cryptvol.store.sqlite import SqliteStore

    store = SqliteStore(driver.state_dir / "cryptvol.db")
    try:
        store.txn([], [Delete(dek_key(keyless))])
    finally:
        store.close()

    def get(volume_id):
        return csi.controller.ControllerGetVolume(
            pb.ControllerGetVolumeRequest(volume_id=volume_id)).status.volume_condition

    assert not get(fine).abnormal
    assert get(unbacked).abnormal and "backing volume" in get(unbacked).message
    assert get(keyless).abnormal and "data key" in get(keyless).message
    listed = {e.volume.volume_id: e.status.volume_condition.abnormal
              for e in csi.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert listed == {fine: False, unbacked: True, keyless: True}
