"""Prometheus metrics of the key manager (prometheus-client's default registry)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from cryptvol.keys.keyset import STAGES, KeySetRecord

WRAP_ERRORS = Counter("cryptvol_keys_wrap_errors", "DEK wrap operations that failed")
UNWRAP_ERRORS = Counter("cryptvol_keys_unwrap_errors", "DEK unwrap operations that failed")
STAGE = Gauge(
    "cryptvol_keys_rotation_stage", "1 for the KEK rotation stage this replica loaded", ["stage"]
)
CURRENT_KEK_CREATED = Gauge(
    "cryptvol_keys_current_kek_created_seconds", "Creation time (epoch) of the current KEK"
)
CURRENT_KEK_AGE = Gauge("cryptvol_keys_current_kek_age_seconds", "Age of the current KEK")
DEKS_PER_KEK = Gauge("cryptvol_keys_deks", "Wrapped DEKs per KEK id (last count)", ["kek"])
REENCRYPT_DONE = Gauge(
    "cryptvol_keys_reencrypt_done", "DEKs the last or running reencrypt has gone through"
)
REENCRYPT_TOTAL = Gauge(
    "cryptvol_keys_reencrypt_total", "DEKs the last or running reencrypt covers"
)
READY = Gauge("cryptvol_keys_ready", "1 when this replica has loaded its key set")

_current_created = 0.0


def observe_key_set(record: KeySetRecord) -> None:
    global _current_created
    for stage in STAGES:
        STAGE.labels(stage=stage).set(1 if stage == record.stage else 0)
    _current_created = record.current.created
    CURRENT_KEK_CREATED.set(_current_created)
    CURRENT_KEK_AGE.set_function(lambda: time.time() - _current_created if _current_created else 0)
    READY.set(1)
