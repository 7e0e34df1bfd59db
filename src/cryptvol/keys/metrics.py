"""Prometheus metrics of the key manager, on the registry of the process that runs it."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from cryptvol.keys.keyset import STAGES, KeySetRecord


class KeyMetrics:
    """The key manager's metrics. Without a registry they go to a private one, so a library
    caller (a CLI command, a test) never touches another component's counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.wrap_errors = Counter(
            "cryptvol_keys_wrap_errors", "DEK wrap operations that failed", registry=r
        )
        self.unwrap_errors = Counter(
            "cryptvol_keys_unwrap_errors", "DEK unwrap operations that failed", registry=r
        )
        self.stage = Gauge(
            "cryptvol_keys_rotation_stage",
            "1 for the KEK rotation stage this replica loaded", ["stage"], registry=r,
        )
        self.current_kek_created = Gauge(
            "cryptvol_keys_current_kek_created_seconds",
            "Creation time (epoch) of the current KEK", registry=r,
        )
        self.current_kek_age = Gauge(
            "cryptvol_keys_current_kek_age_seconds", "Age of the current KEK", registry=r
        )
        self.deks_per_kek = Gauge(
            "cryptvol_keys_deks", "Wrapped DEKs per KEK id (last count)", ["kek"], registry=r
        )
        self.reencrypt_done = Gauge(
            "cryptvol_keys_reencrypt_done_deks",
            "DEKs the last or running reencrypt has gone through", registry=r,
        )
        self.reencrypt_deks = Gauge(
            "cryptvol_keys_reencrypt_deks", "DEKs the last or running reencrypt covers",
            registry=r,
        )
        self.ready = Gauge(
            "cryptvol_keys_ready", "1 when this replica has loaded its key set", registry=r
        )
        self._current_created = 0.0
        self.current_kek_age.set_function(
            lambda: time.time() - self._current_created if self._current_created else 0.0
        )

    def observe_key_set(self, record: KeySetRecord) -> None:
        for stage in STAGES:
            self.stage.labels(stage=stage).set(1 if stage == record.stage else 0)
        self._current_created = record.current.created
        self.current_kek_created.set(self._current_created)
        self.ready.set(1)

    def observe_reencrypt(self, done: int, total: int) -> None:
        self.reencrypt_done.set(done)
        self.reencrypt_deks.set(total)
