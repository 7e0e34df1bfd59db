"""A read-only client of the three Kubernetes objects the Kata triggers read.

`GET /api/v1/namespaces/{ns}/persistentvolumeclaims/{name}`, `GET /api/v1/namespaces/{ns}/
pods/{name}` and `GET /apis/node.k8s.io/v1/runtimeclasses/{name}`, over httpx with the
cluster's CA and a bearer token or client certificate, and a timeout on every request.

Errors say what could not be read and why without the token: an API that does not answer
(refused, timed out, 429, 5xx) is Unavailable, so the container orchestrator retries; one
that refuses the driver (401, 403) is FailedPrecondition with what RBAC to grant. A missing
object is None: the caller decides what that means.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from cryptvol.errors import FailedPrecondition, InvalidArgument, Unavailable
from cryptvol.kube.config import ApiConfig
from cryptvol.system.http import request

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# DNS-1123 subdomain: what every name and namespace read here must be.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    runtime_class_name: str
    fs_group_change_policy: str


@dataclass(frozen=True)
class RuntimeClass:
    name: str
    handler: str


class KubeApi:
    def __init__(self, config: ApiConfig, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.config = config
        self._client = httpx.Client(base_url=config.server, verify=_tls(config),
                                    timeout=timeout, trust_env=False)

    def claim(self, namespace: str, name: str) -> Claim | None:
        found = self._get(f"/api/v1/namespaces/{_seg(namespace)}/persistentvolumeclaims/"
                          f"{_seg(name)}", f"PersistentVolumeClaim {namespace}/{name}")
        if found is None:
            return None
        meta = _dict(found.get("metadata"))
        annotations = {str(k): str(v) for k, v in _dict(meta.get("annotations")).items()}
        return Claim(namespace, name, annotations)

    def pod(self, namespace: str, name: str) -> Pod | None:
        found = self._get(f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(name)}",
                          f"Pod {namespace}/{name}")
        if found is None:
            return None
        spec = _dict(found.get("spec"))
        security = _dict(spec.get("securityContext"))
        return Pod(
            namespace=namespace,
            name=name,
            uid=str(_dict(found.get("metadata")).get("uid", "")),
            runtime_class_name=str(spec.get("runtimeClassName") or ""),
            fs_group_change_policy=str(security.get("fsGroupChangePolicy") or ""),
        )

    def runtime_class(self, name: str) -> RuntimeClass | None:
        found = self._get(f"/apis/node.k8s.io/v1/runtimeclasses/{_seg(name)}",
                          f"RuntimeClass {name}")
        if found is None:
            return None
        return RuntimeClass(name, str(found.get("handler") or ""))

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, what: str) -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        token = self.config.bearer_token()
        if token is not None:
            headers["Authorization"] = "Bearer " + token.reveal().decode()
        where = f"the Kubernetes API ({self.config.source})"
        response = request(self._client, "GET", path, f"{where} reading {what}",
                           headers=headers)
        code = response.status_code
        if code == 404:
            return None
        if code in (401, 403):
            raise FailedPrecondition(
                f"{where} refused to let the driver read {what} (HTTP {code}); grant its "
                "service account get on persistentvolumeclaims, pods and "
                "runtimeclasses.node.k8s.io"
            )
        if code == 429 or code >= 500:
            raise Unavailable(f"{where} answered HTTP {code} reading {what}; retry")
        if code != 200:
            raise FailedPrecondition(f"{where} answered HTTP {code} reading {what}")
        try:
            body = response.json()
        except ValueError:
            raise Unavailable(f"{where} answered {what} with something not JSON") from None
        if not isinstance(body, dict):
            raise Unavailable(f"{where} answered {what} with a JSON {type(body).__name__}")
        return body


def _seg(name: str) -> str:
    """A name as one path segment, refused unless Kubernetes could have made it."""
    if not _NAME.match(name):
        raise InvalidArgument(f"{name!r} is not a Kubernetes object name")
    return quote(name, safe="")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _tls(config: ApiConfig) -> ssl.SSLContext | bool:
    if config.insecure:
        return False
    # With a CA given, only that CA is trusted; without one, the system's.
    context = ssl.create_default_context(
        cadata=config.ca_pem.decode() if config.ca_pem else None
    )
    if config.client_cert_pem and config.client_key_pem:
        with _memory_file(config.client_cert_pem) as cert, \
                _memory_file(config.client_key_pem.reveal()) as key:
            context.load_cert_chain(cert, key)
    return context


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that never touches a disk: ssl loads certificates only from paths."""
    fd = os.memfd_create("cryptvol-kube", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
