"""The Kubernetes API client against a stand-in API server over TLS on loopback (the real
API server cannot run here; tests/support/kube_api.py serves the real objects' shape)."""

import httpx
import pytest

from cryptvol.errors import FailedPrecondition, Unavailable
from cryptvol.kube.api import KubeApi
from cryptvol.kube.config import from_kubeconfig
from support.kube_api import FakeKubeApi
from support.tls_certs import make_tls


@pytest.fixture
def tls(tmp_path):
    return make_tls(tmp_path / "tls")


@pytest.fixture
def server(tls):
    api = FakeKubeApi(token="sa-token-1", tls=tls)
    yield api
    api.stop()


def test_objects_are_read_over_tls_with_a_token_reread_from_its_file(server, tls, tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token-1")
    server.add_claim("apps", "data", {"cryptvol.io/kata-direct": "true"})
    server.add_pod("apps", "web-0", runtime_class="kata", fs_group=2000,
                   fs_group_change_policy="OnRootMismatch", uid="u-1")
    server.add_runtime_class("kata", "kata-qemu")
    api = KubeApi(from_kubeconfig(server.kubeconfig(tmp_path / "kc", ca=tls.ca,
                                                    token_file=token)))
    assert api.claim("apps", "data").annotations == {"cryptvol.io/kata-direct": "true"}
    pod = api.pod("apps", "web-0")
    assert (pod.uid, pod.runtime_class_name, pod.fs_group_change_policy) == \
        ("u-1", "kata", "OnRootMismatch")
    assert api.runtime_class("kata").handler == "kata-qemu"
    assert api.pod("apps", "gone") is None
    server.token = "sa-token-2"
    token.write_text("sa-token-2")  # rotated by the kubelet
    assert api.runtime_class("kata") is not None
    assert server.requests[-1][1] == "Bearer sa-token-2"


def test_a_client_certificate_from_the_kubeconfig_is_presented(tls, tmp_path):
    server = FakeKubeApi(tls=tls, require_client_cert=True)
    try:
        server.add_runtime_class("kata", "kata-clh")
        config = from_kubeconfig(server.kubeconfig(
            tmp_path / "kc", ca=tls.ca, client_cert=tls.client_cert.read_bytes(),
            client_key=tls.client_key.read_bytes()))
        assert KubeApi(config).runtime_class("kata").handler == "kata-clh"
    finally:
        server.stop()


def test_refusals_and_silence_are_told_apart_and_the_token_never_shows(server, tls, tmp_path):
    api = KubeApi(from_kubeconfig(server.kubeconfig(tmp_path / "kc", ca=tls.ca)))
    server.token = "another-token"
    with pytest.raises(FailedPrecondition, match=r"HTTP 401.*grant its service account") as info:
        api.pod("apps", "web-0")
    assert "sa-token-1" not in str(info.value)
    server.down()
    with pytest.raises(Unavailable, match="cannot be reached"):
        api.pod("apps", "web-0")
    server.up()
    server.delay = 1.0
    slow = KubeApi(api.config, timeout=httpx.Timeout(0.2))
    with pytest.raises(Unavailable, match="in time"):
        slow.pod("apps", "web-0")


def test_a_server_with_an_unknown_certificate_is_not_trusted(server, tmp_path):
    other = make_tls(tmp_path / "other")
    api = KubeApi(from_kubeconfig(server.kubeconfig(tmp_path / "kc", ca=other.ca)))
    with pytest.raises(Unavailable):
        api.runtime_class("kata")
