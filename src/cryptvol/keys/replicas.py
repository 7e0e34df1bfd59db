"""Replica reports: what key set each live replica has loaded, published under a lease.

Every replica (each `cryptvol serve --role controller` and each key-manager process) puts
`<stage>-<sha256 of its loaded key set>` at `REPLICA_PREFIX + name` with a time-to-live and
renews it; a replica that dies drops out when its lease lapses. A rotation transition goes
ahead only when every live report equals the one the key-set record implies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.keyset import KeySetRecord
from cryptvol.store.base import Store

REPLICA_PREFIX = "/cryptvol/keys/replicas/"
NOT_READY = "not-ready"


@dataclass(frozen=True)
class ReplicaReport:
    name: str
    role: str
    report: str
    ready: bool
    reason: str
    time: float
    pid: int
    host: str
    keks: tuple[str, ...]

    @property
    def stage(self) -> str:
        return self.report.rsplit("-", 1)[0] if self.ready else NOT_READY

    @property
    def hash(self) -> str:
        return self.report.rsplit("-", 1)[-1] if self.ready else ""

    def to_bytes(self) -> bytes:
        return json.dumps({**self.__dict__, "keks": list(self.keks)}).encode()

    @classmethod
    def from_bytes(cls, name: str, raw: bytes) -> ReplicaReport:
        try:
            doc = json.loads(raw)
            return cls(
                name=name,
                role=str(doc.get("role", "")),
                report=str(doc["report"]),
                ready=bool(doc.get("ready", False)),
                reason=str(doc.get("reason", "")),
                time=float(doc.get("time", 0)),
                pid=int(doc.get("pid", 0)),
                host=str(doc.get("host", "")),
                keks=tuple(str(k) for k in doc.get("keks", [])),
            )
        except (ValueError, KeyError, TypeError):
            return cls(name, "", "unreadable", False, "unreadable report", 0, 0, "", ())


def live_replicas(store: Store) -> list[ReplicaReport]:
    return [
        ReplicaReport.from_bytes(e.key[len(REPLICA_PREFIX) :], e.value)
        for e in store.range(REPLICA_PREFIX)
    ]


def disagreeing(reports: list[ReplicaReport], record: KeySetRecord) -> list[ReplicaReport]:
    expected = record.report()
    return [r for r in reports if not r.ready or r.report != expected]


def await_agreement(
    store: Store, record: KeySetRecord, *, wait: float, poll: float = 0.2
) -> list[ReplicaReport]:
    """Wait up to `wait` seconds for every live replica to report `record`'s key set; then
    raise FailedPrecondition naming each replica that does not."""
    deadline = time.monotonic() + wait
    while True:
        reports = live_replicas(store)
        bad = disagreeing(reports, record)
        if not bad:
            return reports
        if time.monotonic() >= deadline:
            raise FailedPrecondition(disagreement_message(bad, record, wait))
        time.sleep(poll)


def disagreement_message(bad: list[ReplicaReport], record: KeySetRecord, wait: float) -> str:
    now = time.time()
    expected = record.report()
    parts = []
    for r in bad:
        what = f"reports {short(r.report)}" if r.ready else f"is not ready ({r.reason})"
        parts.append(f"{r.name} {what}, last report {now - r.time:.1f}s ago")
    return (
        f"{len(bad)} replica(s) do not agree on the key set of stage {record.stage}"
        f" ({short(expected)}) after {wait:g}s: " + "; ".join(parts) + ". Wait for them to"
        " load it, restart them, or pass --force to go ahead without their agreement"
    )


def short(report: str) -> str:
    """`stage-<64 hex>` → `stage-<12 hex>` for people; the full form is in --json."""
    stage, _, digest = report.rpartition("-")
    return f"{stage}-{digest[:12]}" if stage else report
