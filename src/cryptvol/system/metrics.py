"""One Prometheus registry per process, and its HTTP exposition.

A process (`cryptvol serve`, `cryptvol kms serve`, a key-manager replica) makes one registry
with `new_registry()` and passes it to every part that records metrics; nothing registers
into module-level globals, so two servers in one test process never share counters.
`serve_metrics` exposes a registry on HOST:PORT (prometheus-client's own HTTP server).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from cryptvol.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC collectors prometheus-client offers."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`, or `:PORT` for every address) → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"metrics address {text[:128]!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, address: str) -> MetricsServer:
    """Serve `registry` at http://HOST:PORT/metrics in a daemon thread."""
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot serve metrics on {address[:128]}: {exc.strerror or type(exc).__name__}"
        ) from None
    running = MetricsServer(server, thread)
    log.info("serving metrics", extra={"metrics_address": running.address})
    return running
