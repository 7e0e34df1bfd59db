"""Wires one driver process: the state store, keys, pool backend, locks and the two engines."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptvol.backends.loop import LoopBackend
from cryptvol.engine.controller import ControllerEngine
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.node import NodeEngine
from cryptvol.engine.records import VolumeRepository
from cryptvol.keys.manager import open_local

log = logging.getLogger(__name__)
Role = Literal["all", "controller", "node"]


@dataclass(frozen=True)
class DriverSettings:
    node_id: str
    role: Role
    state_dir: Path
    pool_dir: Path


class Driver:
    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store, self.keys = open_local(settings.state_dir)
        self.volumes = VolumeRepository(self.store)
        self.backend = LoopBackend(settings.pool_dir)
        # One lock table for both services: a node and a controller operation on the same
        # volume in this process must not interleave either.
        self.locks = OperationLocks()
        self.controller = ControllerEngine(
            self.volumes, self.keys, self.backend, settings.node_id, self.locks
        )
        self.node = NodeEngine(
            self.volumes, self.keys, self.backend, settings.node_id, self.locks
        )
        self._host_probed = True

    @property
    def serves_controller(self) -> bool:
        return self.settings.role in ("all", "controller")

    @property
    def serves_node(self) -> bool:
        return self.settings.role in ("all", "node")

    def ready(self) -> bool:
        return self._host_probed and self.keys.ready()

    def close(self) -> None:
        self.store.close()
