"""A stand-in Kubernetes API server for tests: the real API server cannot run here.

It serves the three read paths the driver uses (`/api/v1/namespaces/{ns}/
persistentvolumeclaims/{name}`, `/api/v1/namespaces/{ns}/pods/{name}`,
`/apis/node.k8s.io/v1/runtimeclasses/{name}`) from objects shaped like the real ones
(metadata, spec, status; a `Status` object with code 404 for a missing one), on a loopback
port, over plain HTTP or TLS, checking a bearer token when given one. `down()` makes every
request fail with a reset connection, like an API server that went away.
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.tls_certs import TlsFiles


class FakeKubeApi:
    def __init__(self, token: str = "", tls: TlsFiles | None = None,
                 require_client_cert: bool = False) -> None:
        self.token = token
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Authorization header)
        self.is_down = False
        self.delay = 0.0
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            if require_client_cert:
                context.load_verify_locations(tls.ca)
                context.verify_mode = ssl.CERT_REQUIRED
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    # --- objects, in the real API's shape -----------------------------------------------
    def add_claim(self, namespace: str, name: str, annotations: dict[str, str] | None = None,
                  access_mode: str = "ReadWriteOnce") -> None:
        self._put(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}", {
            "kind": "PersistentVolumeClaim",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "resourceVersion": "1", "annotations": annotations or {}},
            "spec": {"accessModes": [access_mode], "volumeMode": "Filesystem",
                     "storageClassName": "cryptvol",
                     "resources": {"requests": {"storage": "64Mi"}}},
            "status": {"phase": "Pending"},
        })

    def add_pod(self, namespace: str, name: str, runtime_class: str = "",
                fs_group: int | None = None, fs_group_change_policy: str = "",
                uid: str = "") -> str:
        uid = uid or str(uuid.uuid4())
        security: dict[str, Any] = {}
        if fs_group is not None:
            security["fsGroup"] = fs_group
        if fs_group_change_policy:
            security["fsGroupChangePolicy"] = fs_group_change_policy
        spec: dict[str, Any] = {
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "securityContext": security,
            "nodeName": "node-1",
        }
        if runtime_class:
            spec["runtimeClassName"] = runtime_class
        self._put(f"/api/v1/namespaces/{namespace}/pods/{name}", {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "resourceVersion": "1"},
            "spec": spec,
            "status": {"phase": "Pending"},
        })
        return uid

    def add_runtime_class(self, name: str, handler: str) -> None:
        self._put(f"/apis/node.k8s.io/v1/runtimeclasses/{name}", {
            "kind": "RuntimeClass",
            "apiVersion": "node.k8s.io/v1",
            "metadata": {"name": name, "resourceVersion": "1"},
            "handler": handler,
            "overhead": {"podFixed": {"memory": "160Mi", "cpu": "250m"}},
        })

    def remove(self, path_suffix: str) -> None:
        with self._lock:
            for path in [p for p in self.objects if p.endswith(path_suffix)]:
                del self.objects[path]

    def kubeconfig(self, path: Path, *, ca: Path | None = None, token_file: Path | None = None,
                   client_cert: bytes | None = None, client_key: bytes | None = None) -> Path:
        """Write a kubeconfig (JSON is YAML) naming this server."""
        import base64

        cluster: dict[str, Any] = {"server": self.url}
        if ca is not None:
            cluster["certificate-authority"] = str(ca)
        user: dict[str, Any] = {}
        if token_file is not None:
            user["tokenFile"] = str(token_file)
        elif self.token:
            user["token"] = self.token
        if client_cert and client_key:
            user["client-certificate-data"] = base64.b64encode(client_cert).decode()
            user["client-key-data"] = base64.b64encode(client_key).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "driver", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "driver"}}],
        }))
        return path

    def _put(self, path: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self.objects[path] = obj

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        auth = handler.headers.get("Authorization", "")
        with self._lock:
            self.requests.append((handler.path, auth))
            obj = self.objects.get(handler.path.split("?")[0])
        if self.is_down:
            handler.connection.close()
            return
        if self.delay:
            threading.Event().wait(self.delay)
        if self.token and auth != f"Bearer {self.token}":
            return self._answer(handler, 401, _status(401, "Unauthorized", "Unauthorized"))
        if obj is None:
            return self._answer(handler, 404, _status(
                404, "NotFound", f"{handler.path.rsplit('/', 1)[-1]!r} not found"))
        self._answer(handler, 200, obj)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
