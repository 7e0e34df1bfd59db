"""Finding the Kubernetes API: a kubeconfig's current context, or the in-cluster account."""

import base64
import json

import pytest

from cryptvol.errors import InvalidArgument
from cryptvol.kube.config import discover, from_kubeconfig, in_cluster


def _kubeconfig(path, cluster, user):
    path.write_text(json.dumps({
        "current-context": "ctx",
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }))
    return path


def test_a_kubeconfig_gives_server_ca_and_token(tmp_path):
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    config = from_kubeconfig(_kubeconfig(
        tmp_path / "kc",
        {"server": "https://api.example:6443/", "certificate-authority-data":
         base64.b64encode(pem).decode()},
        {"token": "tok-123"},
    ))
    assert config.server == "https://api.example:6443"
    assert config.ca_pem == pem
    assert config.bearer_token().reveal() == b"tok-123"
    assert "tok-123" not in repr(config)


def test_files_named_by_a_kubeconfig_are_relative_to_it_and_tokens_are_reread(tmp_path):
    (tmp_path / "ca.pem").write_bytes(b"CA")
    (tmp_path / "token").write_text("first\n")
    config = from_kubeconfig(_kubeconfig(
        tmp_path / "kc", {"server": "https://h:1", "certificate-authority": "ca.pem"},
        {"tokenFile": "token"},
    ))
    assert config.ca_pem == b"CA"
    assert config.bearer_token().reveal() == b"first"
    (tmp_path / "token").write_text("rotated")
    assert config.bearer_token().reveal() == b"rotated"


@pytest.mark.parametrize(("user", "message"), [
    ({"exec": {"command": "aws"}}, "exec plugin"),
    ({"auth-provider": {"name": "gcp"}}, "auth-provider plugin"),
    ({"client-key-data": "!!"}, "not base64"),
])
def test_what_the_driver_cannot_use_is_refused_at_start(tmp_path, user, message):
    with pytest.raises(InvalidArgument, match=message):
        from_kubeconfig(_kubeconfig(tmp_path / "kc", {"server": "https://h:1"}, user))


def test_a_broken_kubeconfig_is_refused_without_quoting_it(tmp_path):
    path = tmp_path / "kc"
    path.write_text("users: [ {token: s3cr3t-token\n")
    with pytest.raises(InvalidArgument) as info:
        from_kubeconfig(path)
    assert "s3cr3t" not in str(info.value)


def test_in_cluster_uses_the_service_account_and_nothing_means_no_api(tmp_path):
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "token").write_text("sa-token")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    config = in_cluster(env, tmp_path)
    assert config.server == "https://[fd00::1]:443"
    assert config.ca_pem == b"CA"
    assert config.bearer_token().reveal() == b"sa-token"
    assert discover(None, {}, tmp_path) is None
