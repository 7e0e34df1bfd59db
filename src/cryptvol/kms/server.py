"""Serves the KMS v2 plugin over gRPC on a unix socket (the plumbing is `cryptvol.rpc`)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from cryptvol.keys.sealed import Sealer
from cryptvol.kms.gen import kms_pb2_grpc
from cryptvol.kms.metrics import KmsCollector
from cryptvol.kms.service import KmsServicer
from cryptvol.rpc.interceptor import RpcInterceptor
from cryptvol.rpc.metrics import RpcMetrics
from cryptvol.rpc.server import RpcServer

log = logging.getLogger(__name__)

SUBJECTS = {"uid": ("uid",), "key_id": ("key_id",)}
# The apiserver's data key arrives as Encrypt's plaintext; it never reaches a log.
SECRET_FIELDS = ("plaintext",)


class KmsServer(RpcServer):
    def __init__(self, sealer: Sealer, endpoint: str, registry: CollectorRegistry,
                 workers: int = 8) -> None:
        super().__init__(
            endpoint,
            RpcInterceptor(subjects=SUBJECTS, secret_fields=SECRET_FIELDS,
                           metrics=RpcMetrics(registry, "cryptvol_kms")),
            workers=workers,
            name="kms",
        )
        KmsCollector(sealer, registry)
        kms_pb2_grpc.add_KeyManagementServiceServicer_to_server(KmsServicer(sealer), self.grpc)

    def start(self) -> None:
        super().start()
        log.info("serving the KMS v2 plugin", extra={"endpoint": self.endpoint})
