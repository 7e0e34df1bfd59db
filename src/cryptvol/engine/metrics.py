"""What the driver tells Prometheus about its volumes: how many by state and pool, how long
unlocks take and wait for the node's memory budget, and which volumes are Kata direct
volumes by which trigger. On the process's registry, never a module global."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptvol.engine.direct import PVC_ANNOTATION, RUNTIME_CLASS, STORAGECLASS, Trigger
from cryptvol.errors import CryptvolError
from cryptvol.state.repository import VolumeRepository

# An unlock with pbkdf2 at its minimum takes milliseconds; argon2 under emulation, a minute.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.unlock = Histogram(
            "cryptvol_unlock_duration_seconds",
            "Time cryptsetup took to open a volume's LUKS2 mapping, by keyslot PBKDF",
            ["pbkdf"], registry=r, buckets=_BUCKETS,
        )
        self.budget_wait = Histogram(
            "cryptvol_unlock_budget_wait_seconds",
            "Time an unlock waited for the node's memory budget (memory-hard keyslots)",
            registry=r, buckets=_BUCKETS,
        )
        self.direct = Gauge(
            "cryptvol_direct_volumes",
            "Kata direct volumes published on this node, by what made them direct",
            ["trigger"], registry=r,
        )
        self._lock = threading.Lock()
        self._direct: dict[str, Trigger] = {}
        self._count_direct()  # every trigger shows, at 0, from the start

    def unlocked(self, pbkdf: str, seconds: float) -> None:
        self.unlock.labels(pbkdf=pbkdf).observe(seconds)

    def waited_for_budget(self, seconds: float) -> None:
        self.budget_wait.observe(seconds)

    def published_direct(self, volume_id: str, trigger: Trigger) -> None:
        with self._lock:
            self._direct[volume_id] = trigger
            self._count_direct()

    def unpublished_direct(self, volume_id: str) -> None:
        with self._lock:
            self._direct.pop(volume_id, None)
            self._count_direct()

    def _count_direct(self) -> None:
        counts = Counter(self._direct.values())
        for trigger in (STORAGECLASS, PVC_ANNOTATION, RUNTIME_CLASS):
            self.direct.labels(trigger=trigger).set(counts.get(trigger, 0))


class VolumeCollector(Collector):
    """`cryptvol_volumes{state,pool}`, counted from the records at each scrape, so the figure
    is the store's, whichever replica made the volumes."""

    def __init__(self, volumes: VolumeRepository) -> None:
        self.volumes = volumes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("cryptvol_volumes", "Volumes by state and pool",
                                   labels=["state", "pool"])
        try:
            counts = Counter((r.state, r.pool) for r in self.volumes.all())
        except CryptvolError:
            return  # a store that does not answer has no figure; Probe says why
        for (state, pool), n in sorted(counts.items()):
            family.add_metric([state, pool], n)
        yield family
