"""Wires one driver process: the state store, keys, pools, locks and the two engines."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptvol.engine.controller import ControllerEngine
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.node import NodeEngine, release_interrupted_reencryptions
from cryptvol.engine.snapshots import SnapshotEngine
from cryptvol.errors import CryptvolError, Unavailable
from cryptvol.keys.config import KeysConfig, open_keys
from cryptvol.keys.replica import Replica
from cryptvol.luks.budget import MemoryBudget
from cryptvol.luks.probe import HostProbe, probe_host
from cryptvol.pools.registry import PoolSpec, open_pools
from cryptvol.state.nodes import save_host_probe
from cryptvol.state.repository import SnapshotRepository, VolumeRepository

log = logging.getLogger(__name__)
Role = Literal["all", "controller", "node"]


@dataclass(frozen=True)
class DriverSettings:
    node_id: str
    role: Role
    state_dir: Path
    pools: tuple[PoolSpec, ...]
    keys: KeysConfig | None = None


class Driver:
    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Pools first: a mistyped pool stops the start before any store or thread exists.
        self.pools = open_pools(settings.pools)
        keys_config = settings.keys or KeysConfig(state_dir=settings.state_dir)
        # With etcd, a driver whose store is unreachable or whose key set cannot load yet
        # starts anyway and answers Probe "not ready" until it has loaded. The embedded
        # store is local: a missing or corrupt KEK file there will not heal by waiting,
        # so it stops the start with the reason.
        self.store, self.keys = open_keys(keys_config, lazy=bool(keys_config.etcd_endpoints))
        self.replica: Replica | None = None
        if settings.role in ("all", "controller"):
            # Controllers wrap new DEKs, so they take part in KEK rotation agreement.
            self.replica = Replica(self.keys, name=settings.node_id, role="controller").start()
        self.volumes = VolumeRepository(self.store)
        snapshots = SnapshotRepository(self.store)
        # One lock table for both services: a node and a controller operation on the same
        # volume in this process must not interleave either.
        self.locks = OperationLocks()
        self._host: HostProbe | None = None
        self._probe_error = ""
        self.controller = ControllerEngine(
            self.volumes, snapshots, self.keys, self.pools, settings.node_id, self.locks,
            self.host
        )
        self.snapshots = SnapshotEngine(self.volumes, snapshots, self.keys, self.pools,
                                        settings.node_id, self.locks)
        self.budget: MemoryBudget | None = None
        self.node = NodeEngine(
            self.volumes, self.keys, self.pools, settings.node_id, self.locks
        )
        if self.serves_node:
            release_interrupted_reencryptions()
        # The probe runs cryptsetup a few times; the socket comes up meanwhile and Probe
        # answers not-ready until it is done.
        self._probed = threading.Event()
        threading.Thread(target=self._probe, name="host-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            host = probe_host()
            try:
                save_host_probe(self.store, self.settings.node_id, host.to_json())
            except Unavailable:
                # The probe is for this process first; the copy in the store (what
                # `cryptvol doctor` of another node could read) can wait for the next start.
                log.warning("host probe not cached: state store unreachable")
            self.budget = MemoryBudget.for_host(host)
            self.node.budget = self.budget
            self._host = host
            log.info("host probed", extra={"cryptsetup": host.cryptsetup_version,
                                           "argon2": host.argon2, "dm_crypt": host.dm_crypt})
        except CryptvolError as exc:
            self._probe_error = str(exc)
            log.error("host probe failed", extra={"error": str(exc)})
        finally:
            self._probed.set()

    def host(self) -> HostProbe:
        """The probe of this host; Unavailable until it has finished."""
        if not self._probed.wait(timeout=60):
            raise Unavailable("the host probe has not finished yet; retry shortly")
        if self._host is None:
            raise Unavailable(f"the host probe failed: {self._probe_error}")
        return self._host

    @property
    def serves_controller(self) -> bool:
        return self.settings.role in ("all", "controller")

    @property
    def serves_node(self) -> bool:
        return self.settings.role in ("all", "node")

    def ready(self) -> bool:
        keys_ready = self.replica.ready() if self.replica else self.keys.ready()
        return self._host is not None and keys_ready

    def close(self) -> None:
        # A reencryption's cryptsetup dies with this process: stop it where it can resume.
        self.node.reencryptions.stop_all()
        if self.replica is not None:
            self.replica.stop()
        self.store.close()
