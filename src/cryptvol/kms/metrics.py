"""The KMS plugin's own metrics, read from its state at scrape time: the current key and
when this replica last used each key. Request counts and latency come from `cryptvol.rpc`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cryptvol.keys.sealed import Sealer


class KmsCollector(Collector):
    def __init__(self, sealer: Sealer, registry: CollectorRegistry) -> None:
        self.sealer = sealer
        registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = GaugeMetricFamily(
            "cryptvol_kms_current_key",
            "1 for the key_id Encrypt uses now (and its sha256, as kube-apiserver reports it)",
            labels=["key_id", "key_id_hash"],
        )
        loaded = self.sealer.manager.loaded_or_none()
        if loaded is not None:
            key_id = loaded.current_id
            current.add_metric([key_id, hashlib.sha256(key_id.encode()).hexdigest()], 1)
        yield current
        last_used = GaugeMetricFamily(
            "cryptvol_kms_key_last_used_seconds",
            "When this replica last encrypted or decrypted with each key_id (epoch)",
            labels=["key_id"],
        )
        for kek_id, when in sorted(self.sealer.usage.snapshot().items()):
            last_used.add_metric([kek_id], when)
        yield last_used
        healthy = GaugeMetricFamily(
            "cryptvol_kms_healthy", "1 while Status would answer ok (without its round trip)"
        )
        ready = self.sealer.replica.ready() and not self.sealer.replica.unconfirmed_reason()
        healthy.add_metric([], 1 if ready else 0)
        yield healthy
