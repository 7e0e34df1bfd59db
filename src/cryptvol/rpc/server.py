"""A gRPC server on a unix socket: claim the socket, start, drain, stop (on the SIGTERM
that `system.signals` waits for).

The CSI driver and the KMS plugin both run one; each adds its servicers to `grpc`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent import futures

import grpc

from cryptvol.errors import FailedPrecondition
from cryptvol.rpc.endpoint import claim_socket, socket_path

log = logging.getLogger(__name__)


class RpcServer:
    def __init__(self, endpoint: str, interceptor: grpc.ServerInterceptor, *,
                 workers: int = 16, name: str = "rpc") -> None:
        self.path = socket_path(endpoint)
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
            interceptors=[interceptor],
        )
        self._inode: tuple[int, int] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        claim_socket(self.path)
        # The socket is created with the umask's mode; make it owner-only from the start.
        old = os.umask(0o177)
        try:
            try:
                port = self.grpc.add_insecure_port(self.endpoint)
            except RuntimeError:
                port = 0
            if port == 0:
                raise FailedPrecondition(f"cannot listen on {self.path}")
            self.grpc.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking new RPCs and wait up to `grace` seconds for those in flight; then
        remove the socket, if it is still the one this server made."""
        self.grpc.stop(grace).wait()
        if self._inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None

    def wait(self) -> None:
        self.grpc.wait_for_termination()
