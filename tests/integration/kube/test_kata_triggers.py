"""The three things that make a volume a Kata direct volume, read from a stand-in Kubernetes
API on loopback (the real API server cannot run here; tests/support/kube_api.py serves the
real PVC, Pod and RuntimeClass shapes)."""

import pytest

from cryptvol.engine.direct import DirectTriggers, check_direct_access
from cryptvol.engine.types import AccessMode, AccessType, Capability
from cryptvol.errors import FailedPrecondition, InvalidArgument, Unavailable
from cryptvol.kube.api import KubeApi
from cryptvol.kube.config import from_kubeconfig
from support.kube_api import FakeKubeApi

MOUNT = Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, "ext4")
BLOCK = Capability(AccessType.BLOCK, AccessMode.SINGLE_NODE_WRITER)
CLAIM = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "apps"}


def _pod(name, uid=""):
    return {"csi.storage.k8s.io/pod.name": name, "csi.storage.k8s.io/pod.namespace": "apps",
            "csi.storage.k8s.io/pod.uid": uid}


@pytest.fixture
def server():
    api = FakeKubeApi()
    yield api
    api.stop()


@pytest.fixture
def triggers(server, tmp_path):
    return DirectTriggers(KubeApi(from_kubeconfig(server.kubeconfig(tmp_path / "kc"))))


def test_the_storage_class_decides_without_asking_the_api(triggers, server):
    assert triggers.at_create(True, CLAIM) == "storageclass"
    assert server.requests == []


@pytest.mark.parametrize(("annotations", "trigger"), [
    ({"cryptvol.io/kata-direct": "true"}, "pvc-annotation"),
    ({"cryptvol.io/kata-direct": "false"}, None),
    ({}, None),
])
def test_the_claims_annotation_makes_it_direct(triggers, server, annotations, trigger):
    server.add_claim("apps", "data", annotations)
    assert triggers.at_create(False, CLAIM) == trigger


def test_a_claim_annotation_that_is_not_a_boolean_or_a_missing_claim_is_refused(
        triggers, server):
    with pytest.raises(FailedPrecondition, match="does not exist"):
        triggers.at_create(False, CLAIM)
    server.add_claim("apps", "data", {"cryptvol.io/kata-direct": "yes"})
    with pytest.raises(InvalidArgument, match="accepted values: true, false"):
        triggers.at_create(False, CLAIM)


def test_a_pod_under_a_kata_runtime_class_makes_it_direct(triggers, server):
    uid = server.add_pod("apps", "web-0", runtime_class="kata-fc",
                         fs_group_change_policy="OnRootMismatch")
    server.add_runtime_class("kata-fc", "kata-fc")
    verdict = triggers.at_publish(MOUNT, _pod("web-0", uid))
    assert (verdict.trigger, verdict.handler, verdict.fs_group_change_policy) == \
        ("runtime-class", "kata-fc", "OnRootMismatch")


def test_runc_pods_pods_without_a_class_and_raw_block_are_not_direct(triggers, server):
    server.add_pod("apps", "plain")
    server.add_pod("apps", "runc", runtime_class="runc")
    server.add_runtime_class("runc", "runc")
    assert triggers.at_publish(MOUNT, _pod("plain")).trigger is None
    assert triggers.at_publish(MOUNT, _pod("runc")).trigger is None
    asked = len(server.requests)
    assert triggers.at_publish(BLOCK, _pod("runc")).trigger is None
    assert triggers.at_publish(MOUNT, {}).trigger is None
    assert len(server.requests) == asked


def test_handler_patterns_are_configurable_and_empty_turns_the_trigger_off(server, tmp_path):
    api = KubeApi(from_kubeconfig(server.kubeconfig(tmp_path / "kc")))
    server.add_pod("apps", "web-0", runtime_class="secure")
    server.add_runtime_class("secure", "qemu-coco")
    assert DirectTriggers(api, ("kata*", "qemu-*")).at_publish(
        MOUNT, _pod("web-0")).trigger == "runtime-class"
    assert DirectTriggers(api, ()).at_publish(MOUNT, _pod("web-0")).trigger is None


def test_an_absent_runtime_class_or_a_replaced_pod_stops_the_publish(triggers, server):
    server.add_pod("apps", "web-0", runtime_class="kata", uid="new-uid")
    with pytest.raises(FailedPrecondition, match="replaced"):
        triggers.at_publish(MOUNT, _pod("web-0", "old-uid"))
    with pytest.raises(FailedPrecondition, match="RuntimeClass 'kata', which does not exist"):
        triggers.at_publish(MOUNT, _pod("web-0", "new-uid"))


def test_an_unreachable_api_is_unavailable_never_a_host_mount(triggers, server):
    server.down()
    with pytest.raises(Unavailable):
        triggers.at_create(False, CLAIM)
    with pytest.raises(Unavailable):
        triggers.at_publish(MOUNT, _pod("web-0"))


def test_without_an_api_only_the_storage_class_counts():
    triggers = DirectTriggers(None)
    assert triggers.at_create(False, CLAIM) is None
    assert triggers.at_publish(MOUNT, _pod("web-0")).trigger is None
    assert "only the StorageClass" in triggers.describe()


def test_only_single_node_single_pod_access_modes_serve_a_direct_volume():
    check_direct_access([MOUNT], "storageclass")
    many = Capability(AccessType.MOUNT, AccessMode.SINGLE_NODE_MULTI_WRITER)
    with pytest.raises(InvalidArgument, match="ReadWriteOncePod"):
        check_direct_access([many], "pvc-annotation")
