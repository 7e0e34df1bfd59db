"""A small CSI client over a unix socket: what the demo, tests and benchmarks speak with."""

from __future__ import annotations

import time
from types import TracebackType

import grpc

from cryptvol.csi.gen import csi_pb2, csi_pb2_grpc

Mode = csi_pb2.VolumeCapability.AccessMode.Mode


def mount_capability(fs_type: str = "", mode: int = Mode.SINGLE_NODE_WRITER,
                     flags: tuple[str, ...] = ()) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),  # type: ignore[arg-type]
    )


def block_capability(mode: int = Mode.SINGLE_NODE_WRITER) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),  # type: ignore[arg-type]
    )


class CsiClient:
    def __init__(self, endpoint: str) -> None:
        target = endpoint if endpoint.startswith("unix://") else f"unix://{endpoint}"
        self.channel = grpc.insecure_channel(target)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the driver answers Probe with ready=true."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"driver not ready after {timeout:.0f} s (last error: {last})")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CsiClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
