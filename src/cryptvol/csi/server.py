"""Serves the CSI services over gRPC on a unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from concurrent import futures
from pathlib import Path

import grpc

from cryptvol.csi.controller import ControllerServicer
from cryptvol.csi.gen import csi_pb2_grpc
from cryptvol.csi.identity import IdentityServicer
from cryptvol.csi.interceptor import RpcInterceptor
from cryptvol.csi.node import NodeServicer
from cryptvol.engine.driver import Driver
from cryptvol.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)


def socket_path(endpoint: str) -> Path:
    if endpoint.startswith("unix://"):
        path = endpoint.removeprefix("unix://")
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise InvalidArgument(f"endpoint {endpoint!r} must be unix:///absolute/path")
    if not path.startswith("/"):
        raise InvalidArgument(f"endpoint {endpoint!r} must name an absolute path")
    return Path(path)


def _claim_socket(path: Path) -> None:
    """Remove a stale socket left by a crash; refuse to take over one that still answers."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()
        log.info("removed stale socket", extra={"path": str(path)})
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another driver is serving on {path}; stop it first")


class CsiServer:
    def __init__(self, driver: Driver, endpoint: str, workers: int = 16) -> None:
        self.driver = driver
        self.path = socket_path(endpoint)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csi"),
            interceptors=[RpcInterceptor()],
        )
        csi_pb2_grpc.add_IdentityServicer_to_server(
            IdentityServicer(driver.ready, driver.serves_controller), self.server
        )
        if driver.serves_controller:
            csi_pb2_grpc.add_ControllerServicer_to_server(
                ControllerServicer(driver.controller, driver.snapshots), self.server
            )
        if driver.serves_node:
            csi_pb2_grpc.add_NodeServicer_to_server(NodeServicer(driver.node), self.server)

    def start(self) -> None:
        _claim_socket(self.path)
        # The socket is created with the umask's mode; make it owner-only from the start.
        old = os.umask(0o177)
        try:
            self.server.add_insecure_port(f"unix://{self.path}")
            self.server.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("serving", extra={"endpoint": f"unix://{self.path}",
                                   "role": self.driver.settings.role})

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking new RPCs and wait up to `grace` seconds for those in flight."""
        self.server.stop(grace).wait()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def wait(self) -> None:
        self.server.wait_for_termination()
