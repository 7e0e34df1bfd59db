"""Serves the CSI services over gRPC on a unix socket (the plumbing is `cryptvol.rpc`)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from cryptvol.csi.controller import ControllerServicer
from cryptvol.csi.gen import csi_pb2_grpc
from cryptvol.csi.identity import IdentityServicer
from cryptvol.csi.node import NodeServicer
from cryptvol.engine.driver import Driver
from cryptvol.rpc.interceptor import RpcInterceptor
from cryptvol.rpc.metrics import RpcMetrics
from cryptvol.rpc.server import RpcServer

log = logging.getLogger(__name__)

# What the log line of each RPC names, and which request fields never reach a log.
SUBJECTS = {"volume": ("volume_id", "snapshot_id", "source_volume_id", "name")}
SECRET_FIELDS = ("secrets",)


class CsiServer(RpcServer):
    def __init__(self, driver: Driver, endpoint: str, workers: int = 16,
                 registry: CollectorRegistry | None = None) -> None:
        metrics = RpcMetrics(registry, "cryptvol_csi") if registry is not None else None
        super().__init__(
            endpoint,
            RpcInterceptor(subjects=SUBJECTS, secret_fields=SECRET_FIELDS, metrics=metrics),
            workers=workers,
            name="csi",
        )
        self.driver = driver
        csi_pb2_grpc.add_IdentityServicer_to_server(
            IdentityServicer(driver.ready, driver.serves_controller), self.grpc
        )
        if driver.serves_controller:
            csi_pb2_grpc.add_ControllerServicer_to_server(
                ControllerServicer(driver.controller, driver.snapshots), self.grpc
            )
        if driver.serves_node:
            csi_pb2_grpc.add_NodeServicer_to_server(NodeServicer(driver.node), self.grpc)

    def start(self) -> None:
        super().start()
        log.info("serving", extra={"endpoint": self.endpoint, "role": self.driver.settings.role})
