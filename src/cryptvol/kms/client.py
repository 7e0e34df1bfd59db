"""A small KMS v2 client over a unix socket: what tests and the benchmark speak with (the
way kube-apiserver does)."""

from __future__ import annotations

import time
from types import TracebackType

import grpc

from cryptvol.kms.gen import kms_pb2, kms_pb2_grpc


class KmsClient:
    def __init__(self, endpoint: str) -> None:
        target = endpoint if endpoint.startswith("unix://") else f"unix://{endpoint}"
        self.channel = grpc.insecure_channel(target)
        self.kms = kms_pb2_grpc.KeyManagementServiceStub(self.channel)

    def status(self, timeout: float = 5.0) -> kms_pb2.StatusResponse:
        response: kms_pb2.StatusResponse = self.kms.Status(kms_pb2.StatusRequest(), timeout=timeout)
        return response

    def encrypt(self, plaintext: bytes, uid: str = "") -> kms_pb2.EncryptResponse:
        request = kms_pb2.EncryptRequest(plaintext=plaintext, uid=uid)
        response: kms_pb2.EncryptResponse = self.kms.Encrypt(request, timeout=10)
        return response

    def decrypt(self, sealed: kms_pb2.EncryptResponse, uid: str = "") -> bytes:
        request = kms_pb2.DecryptRequest(
            ciphertext=sealed.ciphertext, key_id=sealed.key_id, annotations=sealed.annotations,
            uid=uid,
        )
        return bytes(self.kms.Decrypt(request, timeout=10).plaintext)

    def wait_healthy(self, timeout: float = 60.0) -> kms_pb2.StatusResponse:
        """Wait until Status answers healthz "ok"; return that answer."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status = self.status()
                if status.healthz == "ok":
                    return status
                last = status.healthz
            except grpc.RpcError as exc:
                last = str(exc.code())
            time.sleep(0.1)
        raise TimeoutError(f"KMS plugin not healthy after {timeout:.0f} s (last: {last})")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
