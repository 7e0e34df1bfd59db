"""Where the Kubernetes API is and how the driver proves who it is: in-cluster or a kubeconfig.

Only what a read-only client needs: the server URL, the CA that signs it, and a bearer
token or a client certificate. A token file is read again on every request, since bound
service-account tokens rotate. Exec and auth-provider plugins are refused with a clear
error: they would make the driver run programs named by a file.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cryptvol.errors import InvalidArgument, Unavailable
from cryptvol.system.secret import Secret

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ApiConfig:
    server: str
    source: str  # "in-cluster" or the kubeconfig's path: said in logs and errors
    ca_pem: bytes | None = None
    insecure: bool = False
    token: Secret | None = None
    token_file: Path | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: Secret | None = None

    def bearer_token(self) -> Secret | None:
        if self.token_file is None:
            return self.token
        try:
            value = self.token_file.read_bytes().strip()
        except OSError as exc:
            raise Unavailable(
                f"cannot read the Kubernetes API token file {self.token_file} "
                f"({exc.strerror})"
            ) from None
        return Secret(value) if value else None


def discover(kubeconfig: Path | None,
             environ: Mapping[str, str] = os.environ,
             service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> ApiConfig | None:
    """The API named by `kubeconfig`, else the in-cluster one, else None (no API here)."""
    if kubeconfig is not None:
        return from_kubeconfig(kubeconfig)
    return in_cluster(environ, service_account_dir)


def in_cluster(environ: Mapping[str, str] = os.environ,
               service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> ApiConfig | None:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca_file = service_account_dir / "ca.crt"
    return ApiConfig(
        server=f"https://{host}:{port}",
        source="in-cluster",
        ca_pem=_read(ca_file, "the service account CA") if ca_file.exists() else None,
        token_file=service_account_dir / "token",
    )


def from_kubeconfig(path: Path) -> ApiConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"cannot read kubeconfig {path}: {_reason(exc)}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"kubeconfig {path} is not a mapping")
    where = f"kubeconfig {path}"
    current = doc.get("current-context")
    if not isinstance(current, str) or not current:
        raise InvalidArgument(f"{where} names no current-context")
    context = _named(doc, "contexts", current, where).get("context") or {}
    cluster = _named(doc, "clusters", str(context.get("cluster", "")), where).get("cluster") or {}
    user_name = str(context.get("user", ""))
    user = (_named(doc, "users", user_name, where).get("user") or {}) if user_name else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise InvalidArgument(f"{where}: cluster of context {current!r} has no http(s) server")
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise InvalidArgument(
                f"{where}: user {user_name!r} authenticates with an {plugin} plugin, which "
                "cryptvol does not run; give it a token, tokenFile or client certificate"
            )
    base = path.parent
    token = user.get("token")
    token_file = user.get("tokenFile")
    return ApiConfig(
        server=server.rstrip("/"),
        source=str(path),
        ca_pem=_data_or_file(cluster, "certificate-authority", base, where),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=Secret(str(token).encode()) if token else None,
        token_file=base / str(token_file) if token_file else None,
        client_cert_pem=_data_or_file(user, "client-certificate", base, where),
        client_key_pem=_secret(_data_or_file(user, "client-key", base, where)),
    )


def _named(doc: dict[str, Any], section: str, name: str, where: str) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise InvalidArgument(f"{where}: no entry named {name!r} in {section}")


def _data_or_file(section: dict[str, Any], key: str, base: Path, where: str) -> bytes | None:
    """`key-data` (base64 PEM) or `key` (a file, relative to the kubeconfig's folder)."""
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{where}: {key}-data is not base64") from None
    name = section.get(key)
    if not name:
        return None
    return _read(base / str(name), f"{where}: {key}", InvalidArgument)


def _read(path: Path, what: str,
          error: type[InvalidArgument | Unavailable] = Unavailable) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} file {path} ({exc.strerror})") from None


def _secret(value: bytes | None) -> Secret | None:
    return Secret(value) if value else None


def _reason(exc: Exception) -> str:
    # A YAML error quotes the offending line, which may hold a token: say where, not what.
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"not valid YAML (line {mark.line + 1})"
    return getattr(exc, "strerror", None) or type(exc).__name__
