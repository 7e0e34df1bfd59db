"""A stand-in Kata shim management server for tests: no Kata sandbox can run here.

It listens where a real shim does, `<sandboxes dir>/<sandbox id>/shim-monitor.sock`, and
answers the two direct-volume routes as Kata's shims do: the Go shim
(`shim_management.go`) serves `/direct-volume/stats?path=` on any method and takes
`{"VolumePath", "Size"}` at `/direct-volume/resize`; runtime-rs (`shim_mgmt/handlers.rs`)
routes both on POST only ("URL NOT FOUND" otherwise) and takes
`{"volume_guest_path", "size"}`. Stats are a VolumeStatsResponse in JSON as the Go shim
marshals it (unit 1 bytes, 2 inodes). A path it does not know gets the shim's error
("mount ... not found in sandbox", HTTP 500), as does a resize when told to refuse it.
"""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


class FakeShim:
    def __init__(self, sandboxes_dir: Path, sandbox_id: str, device: str,
                 flavor: str = "go") -> None:
        self.flavor = flavor
        self.device = device
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, query or JSON body)
        self.refuse_resize = ""
        self.usage = {"bytes": (64 << 20, 5 << 20), "inodes": (16384, 12)}  # total, used
        self.socket_path = sandboxes_dir / sandbox_id / "shim-monitor.sock"
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        shim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                shim._serve(self, "GET")

            def do_POST(self) -> None:
                shim._serve(self, "POST")

            def address_string(self) -> str:
                return "unix"

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.socket_path.unlink(missing_ok=True)

    def resizes(self) -> list[Any]:
        return [body for method, path, body in self.calls if path == "/direct-volume/resize"]

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = json.loads(raw) if raw else parse_qs(url.query)
        self.calls.append((method, url.path, body))
        if self.flavor == "rs" and method != "POST":
            return _answer(handler, 404, b"URL NOT FOUND")
        if url.path == "/direct-volume/stats":
            values = parse_qs(url.query).get("path")
            if not values:
                return _answer(handler, 400, b"Required parameter path not found")
            return self._stats(handler, unquote(values[0]))
        if url.path == "/direct-volume/resize":
            key = "VolumePath" if self.flavor == "go" else "volume_guest_path"
            path = body.get(key, "") if isinstance(body, dict) else ""
            if path != self.device:
                return _answer(handler, 500, f"mount {path} not found in sandbox".encode())
            if self.refuse_resize:
                return _answer(handler, 500, self.refuse_resize.encode())
            return _answer(handler, 200, b"")
        _answer(handler, 404, b"404 page not found")

    def _stats(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        if path != self.device:
            return _answer(handler, 500, f"mount {path} not found in sandbox".encode())
        (bt, bu), (it, iu) = self.usage["bytes"], self.usage["inodes"]
        doc = {
            "usage": [
                {"available": bt - bu, "total": bt, "used": bu, "unit": 1},
                {"available": it - iu, "total": it, "used": iu, "unit": 2},
            ],
            "volume_condition": {"message": "volume is healthy"},
        }
        _answer(handler, 200, json.dumps(doc).encode())


def _answer(handler: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
    handler.send_response(code)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
