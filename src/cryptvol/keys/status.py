"""What `cryptvol keys status` shows, read without loading any key material.

The key-set record (stage, KEKs), the live replica reports, the reencrypt cursor and the
number of DEKs: four small reads, whatever the number of DEKs. This module imports no
cryptography and no metrics, so the status command starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.keyset import DEK_PREFIX, KEYSET_KEY, KeySetRecord
from cryptvol.keys.replicas import ReplicaReport, live_replicas
from cryptvol.keys.usage import LastUse, read_usage
from cryptvol.store.base import Store

REENCRYPT_KEY = "/cryptvol/keys/reencrypt"

# What each stage lets an operator run next (commands, not stages: `reencrypt` walks the
# three reencrypt stages itself and resumes from any of them).
ALLOWED_NEXT: dict[str, tuple[str, ...]] = {
    "start": ("prepare",),
    "prepare": ("rotate",),
    "rotate": ("reencrypt",),
    "reencrypt_request": ("reencrypt",),
    "reencrypt_active": ("reencrypt",),
    "reencrypt_finished": ("prepare",),
}


@dataclass(frozen=True)
class ReencryptState:
    """The persisted cursor of a reencrypt: DEKs up to `cursor` (in key order) are done."""

    cursor: str
    done: int
    total: int
    rewrapped: int
    target: str
    started: float
    updated: float
    finished: bool = False

    @property
    def rate(self) -> float:
        spent = self.updated - self.started
        return self.done / spent if spent > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return max(0.0, (self.total - self.done) / rate) if rate > 0 and not self.finished else None

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReencryptState:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            raise FailedPrecondition(
                f"the reencrypt cursor {REENCRYPT_KEY} is unreadable"
            ) from None


@dataclass(frozen=True)
class Status:
    record: KeySetRecord
    revision: int
    replicas: list[ReplicaReport]
    reencrypt: ReencryptState | None
    deks: int
    usage: dict[str, LastUse]

    def _last_use(self, kek_id: str) -> dict[str, object]:
        use = self.usage.get(kek_id)
        return {"kms_last_used": use.time if use else None,
                "kms_last_used_by": use.replica if use else None}

    def to_json(self) -> dict[str, object]:
        expected = self.record.report()
        return {
            "stage": self.record.stage,
            "allowed_next": list(ALLOWED_NEXT[self.record.stage]),
            "current_kek": self.record.current.id,
            "keks": [
                {
                    "id": k.id,
                    "role": k.role,
                    "created": k.created,
                    "fingerprint": k.fingerprint,
                    **self._last_use(k.id),
                }
                for k in self.record.keks
            ],
            "retired": [{**r.__dict__, **self._last_use(r.id)} for r in self.record.retired],
            "expected_report": expected,
            "replicas": [
                {
                    "name": r.name,
                    "role": r.role,
                    "ready": r.ready,
                    "report": r.report,
                    "agrees": r.ready and r.report == expected,
                    "reason": r.reason,
                    "last_report": r.time,
                    "host": r.host,
                    "pid": r.pid,
                }
                for r in self.replicas
            ],
            "deks": self.deks,
            "reencrypt": None
            if self.reencrypt is None
            else {
                **self.reencrypt.__dict__,
                "rate_per_second": round(self.reencrypt.rate, 1),
                "eta_seconds": self.reencrypt.eta,
            },
        }


def read_key_set(store: Store) -> tuple[KeySetRecord, int]:
    entry = store.get(KEYSET_KEY)
    if entry is None:
        raise FailedPrecondition(
            "the state store holds no key set yet; start a replica (or create a volume) first"
        )
    return KeySetRecord.from_bytes(entry.value), entry.revision


def read_cursor(store: Store) -> tuple[ReencryptState | None, int]:
    entry = store.get(REENCRYPT_KEY)
    return (ReencryptState.from_bytes(entry.value), entry.revision) if entry else (None, 0)


def read_status(store: Store) -> Status:
    record, revision = read_key_set(store)
    state, _ = read_cursor(store)
    return Status(
        record, revision, live_replicas(store), state, store.count(DEK_PREFIX), read_usage(store)
    )
