"""The key-set record: which KEKs exist, which wraps new DEKs, and the rotation stage.

One record in the store (`KEYSET_KEY`) holds all of it, so a stage change and the key-set
change it makes are one compare-and-swap: no replica can ever read a stage without the keys
it implies. The record holds KEK metadata and provider references, never key material.

Each replica publishes `report()`: the stage and a sha256 over the ids, fingerprints and
roles of the KEKs it has loaded. Equal reports mean the replicas agree on what wraps new keys
and what can be unwrapped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from cryptvol.errors import FailedPrecondition

KEYSET_KEY = "/cryptvol/keys/keyset"
DEK_PREFIX = "/cryptvol/deks/"

STAGES = (
    "start",
    "prepare",
    "rotate",
    "reencrypt_request",
    "reencrypt_active",
    "reencrypt_finished",
)

# A KEK's role in the set: `current` wraps new DEKs; `prepared` is loaded everywhere but
# wraps nothing yet; `previous` still unwraps DEKs that reencrypt has not reached.
ROLES = ("current", "prepared", "previous")


def dek_key(volume_id: str) -> str:
    return DEK_PREFIX + volume_id


@dataclass(frozen=True)
class KekRecord:
    id: str
    created: float
    fingerprint: str
    ref: str
    role: str


@dataclass(frozen=True)
class Retired:
    id: str
    fingerprint: str
    retired: float


@dataclass(frozen=True)
class KeySetRecord:
    stage: str
    keks: tuple[KekRecord, ...]
    changed: float
    retired: tuple[Retired, ...] = ()
    history: tuple[tuple[str, float], ...] = field(default=())
    # The fingerprint of the root key that seals every KEK of the set ('' when nothing seals
    # them, as with the local KEK file); records written before it existed leave it empty.
    sealed_by: str = ""

    @property
    def current(self) -> KekRecord:
        return next(k for k in self.keks if k.role == "current")

    def by_role(self, role: str) -> list[KekRecord]:
        return [k for k in self.keks if k.role == role]

    def find(self, kek_id: str) -> KekRecord | None:
        return next((k for k in self.keks if k.id == kek_id), None)

    def is_retired(self, kek_id: str) -> bool:
        return any(r.id == kek_id for r in self.retired)

    def key_set_hash(self) -> str:
        lines = sorted(f"{k.id}:{k.fingerprint}:{k.role}" for k in self.keks)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def report(self) -> str:
        return f"{self.stage}-{self.key_set_hash()}"

    def moved(self, stage: str, keks: tuple[KekRecord, ...], now: float, **kw: Any) -> KeySetRecord:
        history = (*self.history, (stage, now))[-20:]
        return replace(self, stage=stage, keks=keks, changed=now, history=history, **kw)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "stage": self.stage,
                "changed": self.changed,
                "keks": [k.__dict__ for k in self.keks],
                "retired": [r.__dict__ for r in self.retired],
                "history": [list(h) for h in self.history],
                "sealed_by": self.sealed_by,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeySetRecord:
        try:
            doc = json.loads(raw)
            if doc.get("v") != 1:
                raise ValueError("version")
            rec = cls(
                stage=str(doc["stage"]),
                changed=float(doc["changed"]),
                keks=tuple(KekRecord(**k) for k in doc["keks"]),
                retired=tuple(Retired(**r) for r in doc.get("retired", [])),
                history=tuple((str(s), float(t)) for s, t in doc.get("history", [])),
                sealed_by=str(doc.get("sealed_by", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FailedPrecondition(
                f"the key-set record {KEYSET_KEY} in the state store is unreadable; restore it"
                " from a backup (cryptvol keys import)"
            ) from None
        if rec.stage not in STAGES or sum(k.role == "current" for k in rec.keks) != 1:
            raise FailedPrecondition(
                f"the key-set record {KEYSET_KEY} is inconsistent (stage {rec.stage!r},"
                f" {sum(k.role == 'current' for k in rec.keks)} current KEKs)"
            )
        return rec
