"""CreateVolume decides and records Kata direct volumes (StorageClass and PVC annotation),
through the real driver, with a stand-in Kubernetes API on loopback (the real API server
cannot run here; tests/support/kube_api.py serves the real PVC shape)."""

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver
from support.kube_api import FakeKubeApi

MIB = 1024 * 1024
MODE = pb.VolumeCapability.AccessMode


@pytest.fixture
def api():
    server = FakeKubeApi(token="provisioner-token")
    yield server
    server.stop()


@pytest.fixture
def csi(api, tmp_path):
    driver = RunningDriver(tmp_path, extra_args=[
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")),
        "--kata-direct-volumes-dir", str(tmp_path / "direct-volumes"),
    ])
    yield driver.start()
    driver.stop()


def _create(csi, name, parameters=None, mode=MODE.SINGLE_NODE_WRITER, claim=None):
    params = dict(parameters or {})
    if claim:
        params["csi.storage.k8s.io/pvc/name"] = claim
        params["csi.storage.k8s.io/pvc/namespace"] = "apps"
        params["csi.storage.k8s.io/pv/name"] = f"pvc-{claim}"
    return csi.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability("ext4", mode)],
        capacity_range=pb.CapacityRange(required_bytes=64 * MIB), parameters=params,
    )).volume


def test_the_volume_context_says_which_trigger_made_a_volume_direct(csi, api):
    api.add_claim("apps", "annotated", {"cryptvol.io/kata-direct": "true"})
    api.add_claim("apps", "plain")
    by_class = _create(csi, "by-class", {"kataDirectVolume": "true"})
    by_claim = _create(csi, "by-claim", claim="annotated")
    plain = _create(csi, "plain", claim="plain")
    assert by_class.volume_context["kataDirect"] == "storageclass"
    assert by_claim.volume_context["kataDirect"] == "pvc-annotation"
    assert "kataDirect" not in plain.volume_context
    assert _create(csi, "by-claim", claim="annotated") == by_claim
    caps = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id=by_claim.volume_id,
        volume_capabilities=[mount_capability("ext4", MODE.SINGLE_NODE_MULTI_WRITER)]))
    assert "Kata direct volume" in caps.message


@pytest.mark.parametrize(("how", "kwargs"), [
    ("storage class", {"parameters": {"kataDirectVolume": "true"}}),
    ("annotation", {"claim": "annotated"}),
])
def test_a_direct_volume_for_several_writers_is_refused_at_create(csi, api, how, kwargs):
    api.add_claim("apps", "annotated", {"cryptvol.io/kata-direct": "true"})
    with pytest.raises(grpc.RpcError) as info:
        _create(csi, f"many-{how[0]}", mode=MODE.SINGLE_NODE_MULTI_WRITER, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one pod on one node" in info.value.details()


def test_an_unreachable_api_is_unavailable_and_the_retry_decides(csi, api, tmp_path):
    api.add_claim("apps", "later", {"cryptvol.io/kata-direct": "true"})
    api.down()
    with pytest.raises(grpc.RpcError) as info:
        _create(csi, "later", claim="later")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "provisioner-token" not in info.value.details()
    api.up()
    assert _create(csi, "later", claim="later").volume_context["kataDirect"] == \
        "pvc-annotation"
