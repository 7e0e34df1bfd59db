"""Configured pools through the real driver: a StorageClass's `pool` picks where the backing
volume lives, and a pool nobody configured is refused before anything is written."""

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver

MIB = 1024 * 1024


@pytest.fixture
def two_pools(tmp_path):
    running = RunningDriver(tmp_path, pool_args=["--pool", f"fast=loop:{tmp_path}/fast",
                                                 "--pool", f"bulk=loop:{tmp_path}/bulk"])
    running.start()
    yield running
    running.stop()


def create(csi, name, parameters):
    return csi.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=32 * MIB),
        volume_capabilities=[mount_capability("ext4")], parameters=parameters,
    )).volume


def test_a_storage_class_pool_places_the_volume_and_the_first_is_the_default(two_pools, tmp_path):
    csi = two_pools.client
    default = create(csi, "a", {})
    bulk = create(csi, "b", {"pool": "bulk"})
    assert (tmp_path / "fast" / f"{default.volume_id}.img").exists()
    assert (tmp_path / "bulk" / f"{bulk.volume_id}.img").exists()
    assert bulk.volume_context["pool"] == "bulk"
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=bulk.volume_id))
    assert not (tmp_path / "bulk" / f"{bulk.volume_id}.img").exists()


def test_an_unknown_pool_is_refused_naming_the_configured_ones(two_pools, tmp_path):
    with pytest.raises(grpc.RpcError) as info:
        create(two_pools.client, "c", {"pool": "ssd"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "configured pools: fast, bulk" in info.value.details()
    assert list((tmp_path / "fast").glob("*.img")) == list((tmp_path / "bulk").glob("*.img")) == []


def test_capacity_is_asked_of_the_named_pool(two_pools):
    request = pb.GetCapacityRequest(parameters={"pool": "bulk"})
    assert two_pools.client.controller.GetCapacity(request).available_capacity > 0


def test_capacity_of_a_pool_this_node_lacks_is_zero_not_an_error(two_pools):
    """Nodes may configure different pools; the provisioner's capacity controller asks every
    node about every class, and the scheduler must learn "no room here"."""
    request = pb.GetCapacityRequest(parameters={"pool": "ssd"})
    assert two_pools.client.controller.GetCapacity(request).available_capacity == 0
