"""The Controller service over a real unix socket, against the real driver process."""

import grpc
import pytest

from cryptvol.csi.client import block_capability, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.vm import dm_crypt_available

MIB = 1024 * 1024


def create(csi, name="vol", size=64 * MIB, **kw):
    kw.setdefault("volume_capabilities", [mount_capability("ext4")])
    return csi.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=name, capacity_range=pb.CapacityRange(required_bytes=size), **kw
        )
    ).volume


def test_create_makes_a_sparse_backing_file_with_room_for_the_luks_header(csi, driver):
    volume = create(csi)
    assert volume.capacity_bytes == 64 * MIB
    backing = driver.pool_dir / f"{volume.volume_id}.img"
    assert backing.stat().st_size == 64 * MIB + 16 * MIB
    assert backing.stat().st_blocks == 0
    assert volume.accessible_topology[0].segments["cryptvol.io/node"] == "node-1"


def test_a_repeated_create_returns_the_same_volume(csi):
    assert create(csi) == create(csi)


def test_a_name_reused_with_other_parameters_is_already_exists(csi):
    create(csi)
    with pytest.raises(grpc.RpcError) as info:
        create(
            csi,
            parameters={"csi.storage.k8s.io/fstype": "xfs"},
            volume_capabilities=[mount_capability()],
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_a_name_reused_with_another_size_is_already_exists(csi):
    create(csi)
    with pytest.raises(grpc.RpcError) as info:
        create(csi, size=128 * MIB)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_delete_removes_the_file_and_shreds_the_key(csi, driver):
    volume = create(csi)
    from cryptvol.store.sqlite import DB_FILE, SqliteStore

    db = driver.state_dir / DB_FILE
    reader = SqliteStore(db, readonly=True)
    wrapped = reader.get(f"/cryptvol/deks/{volume.volume_id}")
    reader.close()
    assert wrapped is not None
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
    # Once DeleteVolume answered, with the driver still running: not a byte of the wrapped
    # key in the database or its WAL.
    assert not any(wrapped.value in p.read_bytes() for p in db.parent.glob(DB_FILE + "*"))
    assert not (driver.pool_dir / f"{volume.volume_id}.img").exists()
    from cryptvol.keys.manager import open_local

    store, keys = open_local(driver.state_dir)
    try:
        from cryptvol.errors import NotFound

        with pytest.raises(NotFound):
            keys.get_dek(volume.volume_id)
    finally:
        store.close()
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))


def test_a_volume_whose_file_a_loop_device_holds_is_not_deleted(csi, driver):
    """A real loop device on this host holds the backing file, as a stage would: the pool
    finds it among the loop devices with a size (/proc/partitions), and DeleteVolume
    refuses, leaving file and key in place, until the device is detached."""
    import subprocess

    volume = create(csi)
    backing = driver.pool_dir / f"{volume.volume_id}.img"
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        with pytest.raises(grpc.RpcError) as info:
            csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "still staged" in info.value.details()
        assert backing.exists()
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert not backing.exists()


def test_list_volumes_pages_with_tokens(csi):
    ids = {create(csi, name=f"v{i}").volume_id for i in range(5)}
    seen, token, pages = set(), "", 0
    while True:
        page = csi.controller.ListVolumes(
            pb.ListVolumesRequest(max_entries=2, starting_token=token)
        )
        seen |= {e.volume.volume_id for e in page.entries}
        pages += 1
        token = page.next_token
        if not token:
            break
    assert seen == ids
    assert pages == 3


def test_a_bad_list_token_is_aborted(csi):
    with pytest.raises(grpc.RpcError) as info:
        csi.controller.ListVolumes(pb.ListVolumesRequest(starting_token="not-a-token"))
    assert info.value.code() == grpc.StatusCode.ABORTED


def test_get_capacity_tells_the_pools_free_space(csi, driver):
    import shutil

    reported = csi.controller.GetCapacity(pb.GetCapacityRequest()).available_capacity
    free = shutil.disk_usage(driver.pool_dir).free
    assert 0 < reported <= free
    assert abs(free - reported) < 64 * MIB
    other_node = csi.controller.GetCapacity(
        pb.GetCapacityRequest(
            accessible_topology=pb.Topology(segments={"cryptvol.io/node": "elsewhere"})
        )
    )
    assert other_node.available_capacity == 0


def test_validate_capabilities_confirms_single_node_and_refuses_multi_node(csi):
    volume = create(csi)
    ok = csi.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[block_capability()]
        )
    )
    assert ok.HasField("confirmed")
    multi = mount_capability("ext4", mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)
    refused = csi.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[multi]
        )
    )
    assert not refused.HasField("confirmed")
    assert "not supported" in refused.message


def test_identity_answers_name_version_capabilities_and_ready(csi):
    info = csi.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "cryptvol.io"
    assert info.vendor_version
    caps = csi.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in services
    assert pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in services
    assert any(
        c.volume_expansion.type == pb.PluginCapability.VolumeExpansion.ONLINE
        for c in caps
        if c.HasField("volume_expansion")
    )
    # A driver serving the node role is ready only where it can open a dm-crypt mapping.
    assert csi.identity.Probe(pb.ProbeRequest()).ready.value == dm_crypt_available()


def test_expansion_is_online_and_done_by_the_node_not_the_controller(csi):
    """Pools are node-local: a resizer without controller expansion hands the request to
    kubelet's NodeExpandVolume, which grows the backing volume on the volume's node."""
    caps = csi.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest())
    offered = {c.rpc.type for c in caps.capabilities}
    rpc = pb.ControllerServiceCapability.RPC
    assert rpc.EXPAND_VOLUME not in offered
    assert offered >= {rpc.CREATE_DELETE_VOLUME, rpc.GET_CAPACITY}
    node = csi.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
    assert pb.NodeServiceCapability.RPC.EXPAND_VOLUME in {c.rpc.type for c in node}


def test_node_reports_its_id_topology_and_capabilities(csi):
    info = csi.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-1"
    assert info.accessible_topology.segments == {"cryptvol.io/node": "node-1"}
    caps = {
        c.rpc.type
        for c in csi.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
    }
    rpc = pb.NodeServiceCapability.RPC
    assert caps == {
        rpc.STAGE_UNSTAGE_VOLUME,
        rpc.GET_VOLUME_STATS,
        rpc.EXPAND_VOLUME,
        rpc.VOLUME_CONDITION,
        rpc.VOLUME_MOUNT_GROUP,
    }


def test_volume_show_tells_the_luks_parameters_and_why(csi, driver):
    import json
    import subprocess
    import sys

    volume = create(csi)
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryptvol",
            "volume",
            "show",
            volume.volume_id,
            "--endpoint",
            driver.endpoint,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    described = json.loads(shown.stdout)
    assert described["id"] == volume.volume_id
    assert described["pbkdf"] == "pbkdf2"
    assert "managed" in described["luks"]
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryptvol",
            "volume",
            "show",
            "cv-" + "0" * 32,
            "--endpoint",
            driver.endpoint,
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr == f"Error: volume cv-{'0' * 32} does not exist\n"


def test_a_volume_larger_than_the_pool_is_refused_and_leaves_nothing(csi, driver):
    with pytest.raises(grpc.RpcError) as info:
        create(csi, name="huge", size=1 << 50)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "may promise" in info.value.details()
    assert list(driver.pool_dir.glob("*.img")) == []
    assert not csi.controller.ListVolumes(pb.ListVolumesRequest()).entries
    create(csi, name="huge", size=64 * MIB)


def test_every_controller_and_identity_rpc_called_twice_gives_the_same_answer(csi):
    volume = create(csi)
    vid = volume.volume_id
    calls = [
        lambda: csi.identity.GetPluginInfo(pb.GetPluginInfoRequest()),
        lambda: csi.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()),
        lambda: csi.identity.Probe(pb.ProbeRequest()),
        lambda: csi.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()),
        lambda: create(csi),
        lambda: csi.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid)),
        lambda: csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id=vid, volume_capabilities=[mount_capability("ext4")])),
        lambda: csi.controller.ListVolumes(pb.ListVolumesRequest(max_entries=1)),
        lambda: csi.node.NodeGetInfo(pb.NodeGetInfoRequest()),
        lambda: csi.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()),
        lambda: csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid)),
    ]
    for call in calls:
        assert call() == call()
