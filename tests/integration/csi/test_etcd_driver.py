"""The driver with its state in a real etcd: volume records and wrapped keys both there."""

import os
import subprocess
import sys
import time

import grpc
import pytest

from cryptvol.csi.client import CsiClient, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver
from support.etcd_cluster import EtcdCluster


@pytest.fixture
def etcd(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd")
    yield cluster
    cluster.stop()


@pytest.fixture
def root_key(tmp_path):
    path = tmp_path / "root.key"
    subprocess.run([sys.executable, "-m", "cryptvol", "keys", "init-root-key", str(path)],
                   check=True, capture_output=True)
    return path


def _driver(tmp_path, etcd, root_key, name="d1"):
    # The controller role: its readiness is about etcd, whatever the host's dm-crypt.
    running = RunningDriver(tmp_path / name, role="controller")
    running.work.mkdir()
    running.extra_env = {"CRYPTVOL_ETCD_ENDPOINTS": etcd.endpoints,
                         "CRYPTVOL_ROOT_KEY": str(root_key)}
    return running


def test_volumes_and_keys_live_in_etcd(tmp_path, etcd, root_key):
    etcd.start()
    running = _driver(tmp_path, etcd, root_key)
    client = running.start()
    try:
        vol = client.controller.CreateVolume(pb.CreateVolumeRequest(
            name="in-etcd", volume_capabilities=[mount_capability("ext4")])).volume
        assert not (running.state_dir / "cryptvol.db").exists()
        listed = client.controller.ListVolumes(pb.ListVolumesRequest()).entries
        assert [e.volume.volume_id for e in listed] == [vol.volume_id]
        client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    finally:
        running.stop()


@pytest.mark.parametrize("role", ["all", "node"])
def test_probe_is_not_ready_within_the_lease_ttl_of_losing_etcd_and_ready_once_it_is_back(
        tmp_path, etcd, root_key, role):
    from cryptvol.keys.replica import DEFAULT_TTL

    etcd.start()
    running = _driver(tmp_path, etcd, root_key)
    running.extra_env["CRYPTVOL_ROLE"] = role
    client = running.start()
    try:
        etcd.stop()
        lost = time.monotonic()
        while client.identity.Probe(pb.ProbeRequest(), timeout=5).ready.value:
            assert time.monotonic() - lost < DEFAULT_TTL, "Probe still ready without etcd"
            time.sleep(0.2)
        etcd.start()
        client.wait_ready(60)
        if role == "all":
            client.controller.CreateVolume(pb.CreateVolumeRequest(
                name="after", volume_capabilities=[mount_capability("ext4")]))
    finally:
        assert running.stop() == 0


def test_a_driver_started_while_etcd_is_down_is_not_ready_until_it_is_back(tmp_path, etcd,
                                                                           root_key):
    running = _driver(tmp_path, etcd, root_key)
    env = dict(os.environ, **running.extra_env)
    log = (running.work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", running.endpoint,
         "--node-id", "n1", "--role", "controller", "--state-dir", str(running.state_dir),
         "--pool-dir", str(running.pool_dir)], env=env,
        stdout=log, stderr=subprocess.STDOUT)
    try:
        with CsiClient(running.endpoint) as client:
            for _ in range(100):
                try:
                    ready = client.identity.Probe(pb.ProbeRequest(), timeout=2).ready.value
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
            assert ready is False
            assert proc.poll() is None, "the driver must stay up while etcd is down"
            etcd.start()
            client.wait_ready(60)
            client.controller.CreateVolume(pb.CreateVolumeRequest(
                name="after", volume_capabilities=[mount_capability("ext4")]))
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
        log.close()
