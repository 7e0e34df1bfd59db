"""A key-manager replica: loads the key set, follows rotations, reports under a lease.

`Replica` is the loop every replica runs (the key-manager process here; `cryptvol serve
--role controller` runs one too, and a node-only driver runs one that follows the key set
without reporting). It never crashes on a store that is down or a key set it cannot load: it
stays not ready, says why, and tries again. It is ready only once the key set is loaded, its
report published, and while the store keeps answering: a round that cannot reach the store,
or no answer for a lease's time-to-live, makes it not ready until the store is back. Readiness
is read from what the last rounds saw, so asking costs no store round trip. A replica that
stops ends its report's lease, leaving the agreement at once.

The process (`cryptvol keys serve-replica`, or `python -m cryptvol.cli.keys serve-replica`)
adds a small HTTP server on loopback: /healthz (alive), /readyz (200 when ready, 503 and the
reason when not), /status (JSON) and /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cryptvol.errors import CryptvolError, Unavailable
from cryptvol.keys.config import KeysConfig, open_keys
from cryptvol.keys.keyset import KEYSET_KEY
from cryptvol.keys.manager import KeyManager
from cryptvol.keys.metrics import KeyMetrics
from cryptvol.keys.replicas import NOT_READY, REPLICA_PREFIX, ReplicaReport
from cryptvol.keys.rotation import deks_per_kek
from cryptvol.keys.status import read_cursor
from cryptvol.system.metrics import new_registry
from cryptvol.system.signals import StopSignals

log = logging.getLogger(__name__)

DEFAULT_TTL = 10.0
DEFAULT_INTERVAL = 1.0


class Replica:
    def __init__(
        self,
        manager: KeyManager,
        name: str,
        *,
        role: str = "key-manager",
        interval: float = DEFAULT_INTERVAL,
        ttl: float = DEFAULT_TTL,
        count_interval: float = 300.0,
        report: bool = True,
        tasks: Sequence[Callable[[], object]] = (),
    ) -> None:
        """Without `report` it follows the key set and watches the store, but publishes
        nothing, so it takes no part in the rotation agreement (a node-only driver).
        `tasks` run after each round (a KMS plugin flushes its KEK use there); a task that
        fails is logged and does not stop the loop."""
        if not name or "/" in name:
            raise ValueError("a replica name is non-empty and has no '/'")
        self.manager = manager
        self.name = name
        self.role = role
        self.interval = interval
        self.ttl = ttl
        self.count_interval = count_interval
        self.report = report
        self.tasks = tuple(tasks)
        self._published = False
        self._answered = float("-inf")  # monotonic time of the last round the store answered
        self._store_error = "the state store has not been reached yet"
        # When the last round that read the key-set record (and published the report, when
        # reporting) began (monotonic): until a lease later, no rotation can have gone ahead
        # without us.
        self._confirmed: float | None = None
        self._last_error = ""
        self._last_count = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state --------------------------------------------------------------------------------

    def ready(self) -> bool:
        return (
            self.manager.ready()
            and (self._published or not self.report)
            and self._store_answers()
        )

    def not_ready_reason(self) -> str:
        if not self.manager.ready():
            return self.manager.not_ready_reason()
        if self.report and not self._published:
            return f"the key set is loaded but not yet reported: {self._last_error or 'starting'}"
        if self._store_error:
            return f"the state store does not answer: {self._store_error}"
        if not self._store_answers():
            silent = time.monotonic() - self._answered
            return f"the state store has not answered for {silent:.0f}s"
        return ""

    def _store_answers(self) -> bool:
        # The age bound covers a round stuck in timeouts, which has not failed yet.
        return not self._store_error and time.monotonic() - self._answered < self.ttl

    def unconfirmed_reason(self) -> str:
        """Why the loaded key set may be stale, or "" while it was confirmed against the store
        within one report lease. A replica whose report lapsed is left out of rotation
        agreement, so past that it must not wrap anything new."""
        if self._confirmed is None:
            return "the key set has not been confirmed against the store yet: " + (
                self._last_error or self.manager.not_ready_reason() or "starting"
            )
        age = time.monotonic() - self._confirmed
        if age >= self.ttl:
            return (
                f"the key set was last confirmed against the store {age:.0f}s ago, longer than"
                f" the {self.ttl:g}s report lease: {self._last_error or 'no round finished'}"
            )
        return ""

    def status(self) -> dict[str, Any]:
        loaded = self.manager.loaded_or_none()
        return {
            "name": self.name,
            "role": self.role,
            "ready": self.ready(),
            "reason": self.not_ready_reason(),
            "last_error": self._last_error,
            "stage": loaded.record.stage if loaded else None,
            "report": loaded.record.report() if loaded else NOT_READY,
            "keks": [
                {"id": k.id, "role": k.role, "fingerprint": k.fingerprint}
                for k in (loaded.record.keks if loaded else ())
            ],
        }

    # -- the loop -------------------------------------------------------------------------------

    def tick(self) -> None:
        """One round: catch up with the key-set record, then publish the report."""
        started = time.monotonic()
        checked = False
        unreachable = ""
        try:
            if not self.manager.ready():
                self.manager.reload()
            else:
                entry = self.manager.store.get(KEYSET_KEY)
                if entry is None or entry.revision != self.manager.loaded.revision:
                    self.manager.reload()
            checked = True
            self._last_error = ""
        except Unavailable as exc:
            self._last_error = unreachable = str(exc)
        except CryptvolError as exc:
            self._last_error = str(exc)
        except Exception as exc:  # never let a surprise stop the replica
            self._last_error = f"unexpected {type(exc).__name__}: {exc}"
            log.exception("replica %s: loading the key set failed", self.name)
        published = self._publish() if self.report else True
        if not published:
            unreachable = unreachable or self._last_error
        elif checked and self.manager.loaded_or_none() is not None:
            self._confirmed = started
        self._observe_store(unreachable)
        for task in self.tasks:
            try:
                task()
            except Exception as exc:
                log.warning("replica %s: a task failed: %s", self.name, type(exc).__name__)
        self._observe_reencrypt()
        if self.count_interval > 0 and time.monotonic() - self._last_count > self.count_interval:
            self._last_count = time.monotonic()
            self._count_deks()

    def _observe_store(self, unreachable: str) -> None:
        if unreachable:
            if not self._store_error and self._answered > float("-inf"):
                log.warning("replica %s: the state store does not answer: %s", self.name,
                            unreachable)
            self._store_error = unreachable
            return
        if self._store_error and self._answered > float("-inf"):
            log.info("replica %s: the state store answers again", self.name)
        self._store_error = ""
        self._answered = time.monotonic()

    def _publish(self) -> bool:
        """Publish (or renew) the report under its lease; whether the store took it."""
        loaded = self.manager.loaded_or_none()
        report = ReplicaReport(
            name=self.name,
            role=self.role,
            report=loaded.record.report() if loaded else NOT_READY,
            ready=loaded is not None,
            reason="" if loaded else self.manager.not_ready_reason(),
            time=time.time(),
            pid=os.getpid(),
            host=socket.gethostname(),
            keks=tuple(sorted(loaded.keks)) if loaded else (),
        )
        try:
            self.manager.store.put_lease(REPLICA_PREFIX + self.name, report.to_bytes(), self.ttl)
        except CryptvolError as exc:
            self._last_error = f"cannot publish the replica report: {exc}"
            return False
        except Exception as exc:
            self._last_error = f"cannot publish the replica report: {type(exc).__name__}"
            log.exception("replica %s: publishing failed", self.name)
            return False
        if loaded is not None:
            self._published = True
        return True

    def _observe_reencrypt(self) -> None:
        try:
            state, _ = read_cursor(self.manager.store)
        except CryptvolError:
            return
        if state is not None:
            self.manager.metrics.observe_reencrypt(state.done, state.total)

    def _count_deks(self) -> None:
        try:
            counts = deks_per_kek(self.manager.store)
        except CryptvolError:
            return
        self.manager.metrics.deks_per_kek.clear()
        for kek_id, n in counts.items():
            self.manager.metrics.deks_per_kek.labels(kek=kek_id).set(n)

    def start(self) -> Replica:
        self._thread = threading.Thread(target=self._run, name=f"replica-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self.manager.metrics.ready.set(1 if self.ready() else 0)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop the loop and end the report's lease, so the replica leaves the agreement now
        rather than when its lease would lapse."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.report:
            try:
                self.manager.store.end_lease(REPLICA_PREFIX + self.name)
            except CryptvolError as exc:
                log.warning("replica %s: report not withdrawn (%s); it lapses with its lease",
                            self.name, exc)


class _Handler(BaseHTTPRequestHandler):
    replica: Replica

    def do_GET(self) -> None:
        r = self.replica
        if self.path == "/healthz":
            self._send(200, "text/plain", b"ok\n")
        elif self.path == "/readyz":
            ok = r.ready()
            self._send(
                200 if ok else 503,
                "text/plain",
                (f"not ready: {r.not_ready_reason()}\n" if not ok else "ready\n").encode(),
            )
        elif self.path == "/status":
            self._send(200, "application/json", json.dumps(r.status()).encode())
        elif self.path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(r.manager.metrics.registry))
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_health(replica: Replica, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"replica": replica})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def run_replica(
    config: KeysConfig,
    name: str,
    *,
    health: tuple[str, int] | None,
    interval: float = DEFAULT_INTERVAL,
    ttl: float = DEFAULT_TTL,
) -> int:
    """The key-manager process: runs until SIGTERM or SIGINT, then exits 0."""
    stop_signals = StopSignals()
    store, manager = open_keys(config, lazy=True, metrics=KeyMetrics(new_registry()))
    replica = Replica(manager, name, interval=interval, ttl=ttl)
    server = serve_health(replica, *health) if health else None
    log.info("replica %s starting (%s)", name, config.describe())
    replica.start()
    stop_signals.wait()
    replica.stop()
    if server is not None:
        server.shutdown()
    store.close()
    return 0
