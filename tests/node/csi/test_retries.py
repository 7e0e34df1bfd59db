"""The container orchestrator retries everything: repeats, races and crashes converge."""

import threading

import grpc
import pytest

from cryptvol.csi.gen import csi_pb2 as pb
from support.co import MIB, create_volume


def test_every_node_rpc_called_twice_gives_the_same_answer(csi, tmp_path):
    vol = create_volume(csi, tmp_path, "twice", "ext4")
    calls = [
        lambda: csi.node.NodeStageVolume(vol.stage_request()),
        lambda: csi.node.NodePublishVolume(vol.publish_request()),
        lambda: (
            csi.node.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(vol.target))
            ).volume_condition
        ),
        lambda: csi.node.NodeExpandVolume(
            pb.NodeExpandVolumeRequest(
                volume_id=vol.volume_id,
                volume_path=str(vol.target),
                capacity_range=pb.CapacityRange(required_bytes=64 * MIB),
            )
        ),
        lambda: csi.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(vol.target))
        ),
        lambda: csi.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(
                volume_id=vol.volume_id, staging_target_path=str(vol.staging)
            )
        ),
        lambda: csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id)),
    ]
    vol.staging.mkdir()
    for call in calls:
        assert call() == call()


def test_two_concurrent_operations_on_one_volume_one_is_aborted(csi, tmp_path):
    vol = create_volume(csi, tmp_path, "race", "ext4", size=256 * MIB)
    vol.staging.mkdir()
    codes: list[grpc.StatusCode] = []
    barrier = threading.Barrier(2)

    def stage() -> None:
        barrier.wait()
        try:
            csi.node.NodeStageVolume(vol.stage_request())
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=stage) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.name for c in codes) == ["ABORTED", "OK"]
    # State is consistent: one more stage is a no-op, and the volume works.
    vol.stage()
    vol.publish()
    digest = vol.write()
    assert vol.checksum() == digest
    vol.release()


@pytest.mark.parametrize("point", ["stage:after-format", "stage:after-open", "stage:after-mkfs"])
def test_a_driver_killed_mid_stage_converges_on_retry(driver, tmp_path, point):
    csi = driver.client
    vol = create_volume(csi, tmp_path, "crash-" + point.replace(":", "-"), "ext4")
    vol.staging.mkdir()
    driver.restart(failpoints=point)
    vol.csi = driver.client
    with pytest.raises(grpc.RpcError) as info:
        driver.client.node.NodeStageVolume(vol.stage_request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert driver.wait_killed() == -9
    vol.csi = driver.restart()
    vol.stage()
    vol.publish()
    digest = vol.write()
    vol.release()
    # Killed again after the data exists: the retry must open, never reformat.
    vol.csi = driver.restart(failpoints="stage:after-open")
    with pytest.raises(grpc.RpcError):
        vol.csi.node.NodeStageVolume(vol.stage_request())
    driver.wait_killed()
    vol.csi = driver.restart()
    vol.stage()
    vol.publish()
    assert vol.checksum() == digest
    vol.release()


@pytest.mark.parametrize("point", ["create:after-record", "create:after-backing"])
def test_a_driver_killed_mid_create_converges_on_retry(driver, tmp_path, point):
    name = "crash-" + point.replace(":", "-")
    driver.restart(failpoints=point)
    with pytest.raises(grpc.RpcError) as info:
        create_volume(driver.client, tmp_path, name, "ext4")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    driver.wait_killed()
    csi = driver.restart()
    vol = create_volume(csi, tmp_path, name, "ext4")
    assert vol == create_volume(csi, tmp_path, name, "ext4")
    vol.stage()
    vol.publish()
    digest = vol.write()
    assert vol.checksum() == digest
    vol.release()
    vol.delete()
