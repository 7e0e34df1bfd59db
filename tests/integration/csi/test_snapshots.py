"""Snapshots and copies through the real driver, on the loop pool of this host (the bytes are
never opened here; tests/node opens them on a real kernel): idempotent creates, lists that
page across deletes, a volume deleted under its snapshots and copies, a driver killed at
every step."""

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.keys.config import KeysConfig, open_keys
from support.co import from_snapshot, from_volume
from support.crashes import kill_at_each_point
from support.driver import RunningDriver
from support.leftovers import leftovers, loop_objects

MIB = 1024 * 1024
EXT4 = mount_capability("ext4")


def create(csi, name, size=32 * MIB, source=None, parameters=None):
    return csi.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=[EXT4], volume_content_source=source, parameters=parameters or {},
    )).volume


def snapshot(csi, name, volume_id):
    return csi.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(name=name, source_volume_id=volume_id)).snapshot


def listed(csi, **filters):
    return [e.snapshot.snapshot_id for e in
            csi.controller.ListSnapshots(pb.ListSnapshotsRequest(**filters)).entries]


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_snapshot_is_made_once_per_name_and_source(csi, driver):
    vol = create(csi, "src")
    first = snapshot(csi, "snap", vol.volume_id)
    assert first.ready_to_use
    assert first.size_bytes == 32 * MIB
    assert first.source_volume_id == vol.volume_id
    assert first.creation_time.seconds > 0
    assert snapshot(csi, "snap", vol.volume_id) == first
    other = create(csi, "other")
    assert code_of(lambda: snapshot(csi, "snap", other.volume_id)) == \
        grpc.StatusCode.ALREADY_EXISTS
    got = csi.controller.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=first.snapshot_id))
    assert got.snapshot == first
    assert (driver.pool_dir / "snapshots" / f"{first.snapshot_id}.img").exists()


def test_copies_are_made_once_per_name_and_source_and_say_where_they_came_from(csi, driver):
    vol = create(csi, "src")
    snap = snapshot(csi, "snap", vol.volume_id)
    restore = create(csi, "restore", size=64 * MIB, source=from_snapshot(snap.snapshot_id))
    assert restore.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert restore.capacity_bytes == 64 * MIB
    assert create(csi, "restore", size=64 * MIB, source=from_snapshot(snap.snapshot_id)) == \
        restore
    assert code_of(lambda: create(csi, "restore", source=from_volume(vol.volume_id))) == \
        grpc.StatusCode.ALREADY_EXISTS
    clone = create(csi, "clone", size=0, source=from_volume(vol.volume_id))
    assert clone.content_source.volume.volume_id == vol.volume_id
    assert clone.capacity_bytes == 32 * MIB  # no size asked: the source's
    backing = (driver.pool_dir / f"{restore.volume_id}.img").stat().st_size
    assert backing >= 64 * MIB


def test_a_volume_deleted_under_its_snapshot_and_copy_is_gone_but_they_are_not(csi, driver):
    vol = create(csi, "src")
    snap = snapshot(csi, "snap", vol.volume_id)
    clone = create(csi, "clone", source=from_volume(vol.volume_id))
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))

    ids = [e.volume.volume_id for e in csi.controller.ListVolumes(pb.ListVolumesRequest()).entries]
    assert vol.volume_id not in ids and clone.volume_id in ids
    assert code_of(lambda: csi.controller.ControllerGetVolume(
        pb.ControllerGetVolumeRequest(volume_id=vol.volume_id))) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshot(csi, "again", vol.volume_id)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: create(csi, "clone-2", source=from_volume(vol.volume_id))) == \
        grpc.StatusCode.NOT_FOUND

    assert listed(csi, source_volume_id=vol.volume_id) == [snap.snapshot_id]
    restore = create(csi, "restore", source=from_snapshot(snap.snapshot_id))
    assert (driver.pool_dir / f"{restore.volume_id}.img").exists()

    _, keys = open_keys(KeysConfig(state_dir=driver.state_dir))
    # The snapshot keeps the key its bytes were written with; the copies start with it.
    assert keys.get_dek(snap.snapshot_id) == keys.get_dek(restore.volume_id)
    assert keys.get_dek(snap.snapshot_id) == keys.get_dek(clone.volume_id)
    keys.store.close()
    assert leftovers(driver.state_dir, {"default": loop_objects(driver.pool_dir)}) == []


def test_snapshot_lists_filter_and_page_across_deletes(csi):
    vols = [create(csi, f"v{i}") for i in range(2)]
    snaps = sorted((snapshot(csi, f"s{i}", vols[i % 2].volume_id) for i in range(5)),
                   key=lambda s: s.snapshot_id)
    ids = [s.snapshot_id for s in snaps]
    assert listed(csi) == ids
    assert listed(csi, source_volume_id=vols[0].volume_id) == \
        [s.snapshot_id for s in snaps if s.source_volume_id == vols[0].volume_id]
    assert listed(csi, snapshot_id=ids[3]) == [ids[3]]
    assert listed(csi, snapshot_id=ids[3], source_volume_id="cv-" + "0" * 32) == []
    assert listed(csi, snapshot_id="cs-" + "0" * 32) == []

    page = csi.controller.ListSnapshots(pb.ListSnapshotsRequest(max_entries=2))
    assert [e.snapshot.snapshot_id for e in page.entries] == ids[:2]
    # The last snapshot of the page and the next one go before the next page is asked.
    for gone in (ids[1], ids[2]):
        csi.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=gone))
    rest = csi.controller.ListSnapshots(
        pb.ListSnapshotsRequest(max_entries=2, starting_token=page.next_token))
    assert [e.snapshot.snapshot_id for e in rest.entries] == ids[3:5]
    assert rest.next_token == ""


def test_volume_lists_page_across_deletes(csi):
    vols = sorted(create(csi, f"v{i}").volume_id for i in range(5))
    page = csi.controller.ListVolumes(pb.ListVolumesRequest(max_entries=2))
    assert [e.volume.volume_id for e in page.entries] == vols[:2]
    for gone in (vols[1], vols[2]):
        csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=gone))
    rest = csi.controller.ListVolumes(
        pb.ListVolumesRequest(max_entries=2, starting_token=page.next_token))
    assert [e.volume.volume_id for e in rest.entries] == vols[3:5]
    assert rest.next_token == ""


def test_the_controller_offers_snapshots_and_clones(csi):
    rpc = pb.ControllerServiceCapability.RPC
    offered = {c.rpc.type for c in csi.controller.ControllerGetCapabilities(
        pb.ControllerGetCapabilitiesRequest()).capabilities}
    assert {rpc.CREATE_DELETE_SNAPSHOT, rpc.LIST_SNAPSHOTS, rpc.GET_SNAPSHOT,
            rpc.CLONE_VOLUME} <= offered


def test_a_copy_stays_in_its_source_pool(tmp_path):
    running = RunningDriver(tmp_path, pool_args=["--pool", f"fast=loop:{tmp_path}/fast",
                                                 "--pool", f"bulk=loop:{tmp_path}/bulk"])
    csi = running.start()
    try:
        vol = create(csi, "src", parameters={"pool": "bulk"})
        snap = snapshot(csi, "snap", vol.volume_id)
        with pytest.raises(grpc.RpcError) as info:
            create(csi, "restore", source=from_snapshot(snap.snapshot_id),
                   parameters={"pool": "fast"})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pool: bulk" in info.value.details()
        assert list((tmp_path / "fast").glob("*.img")) == []
        # Without a pool, a copy goes where its source is, not to the default pool.
        restore = create(csi, "restore", source=from_snapshot(snap.snapshot_id))
        assert (tmp_path / "bulk" / f"{restore.volume_id}.img").exists()
    finally:
        running.stop()


def test_a_driver_killed_at_every_step_of_snapshots_copies_and_deletes_converges(driver):
    vol = create(driver.client, "src")
    ids: dict[str, str] = {}

    def take_snapshot(csi):
        ids["snap"] = snapshot(csi, "snap", vol.volume_id).snapshot_id

    def restore(csi):
        ids["restore"] = create(csi, "restore", source=from_snapshot(ids["snap"])).volume_id

    def clone(csi):
        ids["clone"] = create(csi, "clone", source=from_volume(vol.volume_id)).volume_id

    def delete_source(csi):
        csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))

    def restore_after_delete(csi):
        ids["late"] = create(csi, "late", source=from_snapshot(ids["snap"])).volume_id

    def delete_snapshot(csi):
        csi.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=ids["snap"]))

    csi = kill_at_each_point(driver, [
        (take_snapshot, ["snapshot:after-record", "snapshot:after-key",
                         "snapshot:after-backing"]),
        (restore, ["create:after-record", "copy:after-key", "copy:after-backing"]),
        (clone, []),
        (delete_source, ["delete:after-mark", "delete:after-key", "delete:after-backing"]),
        (restore_after_delete, []),
        (delete_snapshot, ["snapshot-delete:after-mark", "snapshot-delete:after-key",
                           "snapshot-delete:after-backing"]),
    ])
    volumes = {e.volume.volume_id for e in
               csi.controller.ListVolumes(pb.ListVolumesRequest()).entries}
    assert volumes == {ids["restore"], ids["clone"], ids["late"]}
    assert listed(csi) == []
    assert leftovers(driver.state_dir, {"default": loop_objects(driver.pool_dir)}) == []
