"""`cryptvol serve --metrics-address`: one Prometheus registry, scraped over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver
from support.etcd_cluster import free_port


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_rpc_counts_latency_and_key_metrics_are_scraped(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    running = RunningDriver(tmp_path, extra_env={"CRYPTVOL_METRICS_ADDRESS": address})
    client = running.start()
    try:
        for _ in range(3):
            client.identity.GetPluginInfo(pb.GetPluginInfoRequest())
        with pytest.raises(grpc.RpcError):
            client.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=""))
        client.controller.CreateVolume(pb.CreateVolumeRequest(
            name="counted", capacity_range=pb.CapacityRange(required_bytes=32 * 1024 * 1024),
            volume_capabilities=[mount_capability("ext4")]))
        seen = scrape(address)
    finally:
        assert running.stop() == 0

    def value(name: str, **labels: str) -> float:
        return seen[(name, tuple(sorted(labels.items())))]

    assert value("cryptvol_csi_requests_total", method="GetPluginInfo", code="OK") == 3
    assert value("cryptvol_csi_requests_total", method="DeleteVolume",
                 code="INVALID_ARGUMENT") == 1
    assert value("cryptvol_csi_request_duration_seconds_count", method="GetPluginInfo") == 3
    assert value("cryptvol_csi_request_duration_seconds_bucket", method="GetPluginInfo",
                 le="+Inf") == 3
    assert value("cryptvol_keys_ready") == 1
    assert value("cryptvol_keys_rotation_stage", stage="start") == 1
    assert ("process_resident_memory_bytes", ()) in seen
    assert value("cryptvol_volumes", state="ready", pool="default") == 1
    for trigger in ("storageclass", "pvc-annotation", "runtime-class"):
        assert value("cryptvol_direct_volumes", trigger=trigger) == 0
    assert ("cryptvol_unlock_budget_wait_seconds_count", ()) in seen


def test_a_bad_metrics_address_is_refused_before_serving(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", f"unix://{tmp_path}/c.sock",
         "--state-dir", str(tmp_path / "state"), "--pool-dir", str(tmp_path / "pool"),
         "--metrics-address", "nonsense"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is not HOST:PORT" in result.stderr
    assert not (tmp_path / "c.sock").exists()
