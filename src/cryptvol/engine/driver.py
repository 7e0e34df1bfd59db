"""Wires one driver process: the state store, keys, pools, locks and the two engines."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry

from cryptvol.engine.capacity import CapacityLedger
from cryptvol.engine.controller import ControllerEngine
from cryptvol.engine.direct import DirectTriggers
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.metrics import NodeMetrics, VolumeCollector
from cryptvol.engine.node import NodeEngine, release_interrupted_reencryptions
from cryptvol.engine.publishing import PublishModes
from cryptvol.engine.snapshots import SnapshotEngine
from cryptvol.engine.startup import (
    StartRefused,
    check_store_identity,
    kek_evidence,
    prepare_state_dir,
)
from cryptvol.errors import CryptvolError, Internal, Unavailable
from cryptvol.keys.config import KeysConfig, open_provider, open_store
from cryptvol.keys.manager import KeyManager
from cryptvol.keys.metrics import KeyMetrics
from cryptvol.keys.replica import Replica
from cryptvol.kube.api import KubeApi
from cryptvol.kube.config import discover
from cryptvol.luks.budget import MemoryBudget
from cryptvol.luks.probe import HostProbe, probe_host
from cryptvol.mounts.direct_volumes import DirectVolumes
from cryptvol.mounts.kata import KataDirect
from cryptvol.mounts.kata_defaults import (
    DIRECT_VOLUMES_DIR,
    GO_SANDBOXES,
    RS_SANDBOXES,
    RUNTIME_HANDLERS,
)
from cryptvol.mounts.kata_shim import ShimClient
from cryptvol.mounts.paths import DEFAULT_KUBELET_DIR, KATA_DIRECT, KUBELET, PathGuard
from cryptvol.pools.registry import PoolSpec, open_pools
from cryptvol.state.nodes import save_host_probe
from cryptvol.state.repository import SnapshotRepository, VolumeRepository
from cryptvol.store.base import Store

log = logging.getLogger(__name__)
Role = Literal["all", "controller", "node"]


@dataclass(frozen=True)
class KataSettings:
    """Kata direct-assigned volumes: Kata's folders (overridable for tests) and the
    Kubernetes API the PVC-annotation and runtime-class triggers read."""

    direct_volumes_dir: Path = DIRECT_VOLUMES_DIR
    go_sandboxes_dir: Path = GO_SANDBOXES
    rs_sandboxes_dir: Path = RS_SANDBOXES
    runtime_handlers: tuple[str, ...] = RUNTIME_HANDLERS
    kubeconfig: Path | None = None


@dataclass(frozen=True)
class DriverSettings:
    node_id: str
    role: Role
    state_dir: Path
    pools: tuple[PoolSpec, ...]
    keys: KeysConfig | None = None
    kata: KataSettings = KataSettings()
    # Node request paths must lie inside it (see mounts.paths).
    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    # A pool promises at most its size times this (see engine.capacity).
    overcommit_ratio: float = 1.0
    # Accept a state store that does not match this node's markers and pools.
    adopt: bool = False


class Driver:
    def __init__(
        self, settings: DriverSettings, registry: CollectorRegistry | None = None
    ) -> None:
        """`registry`: the process's Prometheus registry (a private one when not given)."""
        self.settings = settings
        prepare_state_dir(settings.state_dir)
        if self.serves_node:
            # Before any pool is opened: LVM's device scan reads every block device, and one
            # that a killed reencryption left suspended would hang it (and this start) for
            # good. This needs dmsetup only, no key and no store.
            release_interrupted_reencryptions()
        # Then pools: a mistyped pool, or a pool folder that cannot be made, stops the start
        # before any store, key or thread exists.
        self.pools = open_pools(settings.pools)
        # The roots node paths must lie in: kubelet's dir for request paths, Kata's
        # direct-volume dir for the folders the kata mode writes.
        kata = settings.kata
        self.paths = PathGuard({KUBELET: settings.kubelet_dir,
                                KATA_DIRECT: kata.direct_volumes_dir})
        # A kubeconfig that cannot be used stops the start too; an API that cannot be
        # reached only fails the requests that need it.
        api_config = discover(kata.kubeconfig)
        self.kube = KubeApi(api_config) if api_config is not None else None
        direct = DirectTriggers(self.kube, kata.runtime_handlers)
        modes = PublishModes(KataDirect(
            DirectVolumes(self.paths.root(KATA_DIRECT)),
            ShimClient(kata.go_sandboxes_dir, kata.rs_sandboxes_dir),
        ))
        self.keys_config = keys_config = settings.keys or KeysConfig(
            state_dir=settings.state_dir)
        self.store = _open_store(keys_config)
        self.volumes = VolumeRepository(self.store)
        self._identity_lock = threading.Lock()
        self._identity_problem = ""
        self._identity_tried = 0.0
        try:
            # With etcd, an unreachable store defers the check to readiness (below).
            self._identity_ok = self._check_identity()
            # With etcd, a driver whose store is unreachable or whose key set cannot load
            # yet starts anyway and answers Probe "not ready" until it has loaded. The
            # embedded store is local: a missing or corrupt KEK file there will not heal by
            # waiting, so it stops the start with the reason.
            self.keys = KeyManager(self.store, open_provider(keys_config),
                                   lazy=bool(keys_config.etcd_endpoints),
                                   metrics=KeyMetrics(registry), adopt=settings.adopt)
        except BaseException:
            self.store.close()
            if self.kube is not None:
                self.kube.close()
            raise
        # Controllers wrap new DEKs, so they take part in KEK rotation agreement; a node-only
        # driver follows the key set without a report. Both make Probe say whether the store
        # answers, from the loop's last rounds rather than a round trip per Probe.
        controls = settings.role in ("all", "controller")
        self.replica = Replica(self.keys, name=settings.node_id,
                               role="controller" if controls else "node",
                               report=controls).start()
        if registry is not None:
            registry.register(VolumeCollector(self.volumes))
        snapshots = SnapshotRepository(self.store)
        # One lock table for both services: a node and a controller operation on the same
        # volume in this process must not interleave either. One ledger too: creates and
        # node expansions promise from the same pools.
        self.locks = OperationLocks()
        self.ledger = CapacityLedger(self.volumes, settings.node_id, settings.overcommit_ratio)
        self._host: HostProbe | None = None
        self._probe_error = ""
        self.controller = ControllerEngine(
            self.volumes, snapshots, self.keys, self.pools, settings.node_id, self.locks,
            self.host, direct, ledger=self.ledger,
        )
        self.snapshots = SnapshotEngine(self.volumes, snapshots, self.keys, self.pools,
                                        settings.node_id, self.locks)
        self.budget: MemoryBudget | None = None
        self.node = NodeEngine(
            self.volumes, self.keys, self.pools, settings.node_id, self.locks, modes, direct,
            metrics=NodeMetrics(registry), paths=self.paths, ledger=self.ledger,
        )
        # Said once the start can no longer fail on its own settings or store.
        log.info("kata direct volumes", extra={"api": direct.describe(),
                                               "direct_volumes": str(kata.direct_volumes_dir)})
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
            if not self._node_can_serve(host):
                # Probe stays "not ready" for good: say why once, where operators look.
                log.error("not ready: the node service cannot open a dm-crypt mapping here",
                          extra={"reason": host.dm_crypt_detail,
                                 "fix": "load dm_crypt (modprobe dm_crypt) or run the node "
                                        "role on a kernel with device-mapper; `cryptvol "
                                        "doctor` says more"})
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

    def _check_identity(self) -> bool:
        """Check the store's identity; False when an etcd store cannot be reached yet."""
        config = self.keys_config
        try:
            where = (f"in etcd {config.etcd_endpoints}" if config.etcd_endpoints
                     else str(config.db_path))
            check_store_identity(
                self.store, where,
                kek_evidence(self.settings.state_dir, local_keks=config.root_key is None),
                self.pools, self.volumes, adopt=self.settings.adopt)
        except Unavailable:
            if not config.etcd_endpoints:
                raise
            log.warning("store identity check deferred: the state store is unreachable")
            return False
        return True

    def _identity_checked(self) -> bool:
        """With etcd, the identity check waits for the store; until it has passed the
        driver is not ready. A store that fails it keeps the driver not ready for good."""
        if self._identity_ok:
            return True
        with self._identity_lock:
            if self._identity_ok or self._identity_problem or \
                    time.monotonic() - self._identity_tried < 1.0:
                return self._identity_ok
            self._identity_tried = time.monotonic()
            try:
                self._identity_ok = self._check_identity()
            except CryptvolError as exc:
                self._identity_problem = str(exc)
                log.error("not serving this state store", extra={"error": str(exc)})
        return self._identity_ok

    def _node_can_serve(self, host: HostProbe) -> bool:
        return host.dm_crypt or not self.serves_node

    def ready(self) -> bool:
        host = self._host
        return (host is not None and self.replica.ready() and self._node_can_serve(host)
                and self._identity_checked())

    def close(self) -> None:
        # A reencryption's cryptsetup dies with this process: stop it where it can resume.
        self.node.reencryptions.stop_all()
        self.replica.stop()
        self.node.kernel_log.close()
        if self.kube is not None:
            self.kube.close()
        self.store.close()


def _open_store(config: KeysConfig) -> Store:
    try:
        return open_store(config)
    except (Internal, Unavailable) as exc:
        raise StartRefused(
            f"{exc}. Restore it from a backup, or move it away and start once with --adopt "
            "(README: 'When the driver refuses to start')"
        ) from None
