"""The cluster state store: etcd v3, through its JSON gateway with the `etcd3gw` client.

etcd already has what the `Store` contract asks for: one global revision, each key's
`mod_revision`, multi-key transactions whose compares are checked atomically, ranges with a
limit, and leases. A compare on a key's `mod_revision` equal to 0 holds exactly when the key
is absent, as in the contract.

The key manager talks to etcd directly, never through the Kubernetes API (see DESIGN.md).
Endpoints are tried in order; a member that cannot be reached is skipped, so a cluster that
keeps quorum stays usable while one member restarts. A store with no reachable member raises
`Unavailable`; callers treat that as "not now", never as "absent".
"""

from __future__ import annotations

import base64
import json
import math
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
)

from cryptvol.errors import Internal, InvalidArgument, Unavailable
from cryptvol.store.base import Compare, Delete, Entry, Put, prefix_end

# etcd refuses a transaction with more compares or more ops than --max-txn-ops (128 default).
DEFAULT_MAX_TXN_OPS = 128
_PAGE = 1000
# 3.4 and later serve the gateway under /v3/; naming it skips a discovery round trip.
_API_PATH = "/v3/"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, str, int]]:
    """`https://10.0.0.1:2379,10.0.0.2:2379` → [(scheme, host, port), ...]; a bare HOST:PORT
    is http."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[tuple[str, str, int]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InvalidArgument(f"etcd endpoint {item!r} is not http(s)://HOST:PORT")
        out.append((url.scheme, url.hostname, url.port or 2379))
    if not out:
        raise InvalidArgument("no etcd endpoint given")
    return out


class EtcdStore:
    """`Store` on an etcd v3 cluster. Thread-safe: each thread has its own HTTP sessions."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        """`ca_file` verifies https members; `cert_file` and `key_file` are the client
        certificate for an etcd that asks for one (--client-cert-auth), as in RKE2."""
        self.endpoints = parse_endpoints(endpoints)
        if (cert_file is None) != (key_file is None):
            raise InvalidArgument("an etcd client certificate needs both its cert and key file")
        self._tls = (ca_file, cert_file, key_file)
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        # etcd commits concurrent proposals in one raft round and fsync; bulk writers
        # (reencrypt) keep this many transactions in flight.
        self.concurrent_writers = 4
        self._local = threading.local()
        self._preferred = 0  # index of the last member that answered; tried first next time
        self._leases: dict[str, tuple[int, int]] = {}  # key → (lease id, ttl) put_lease holds
        self._leases_lock = threading.Lock()

    def describe(self) -> str:
        return "etcd " + ",".join(f"{s}://{h}:{p}" for s, h, p in self.endpoints)

    # -- transport ------------------------------------------------------------------------

    def _clients(self) -> list[Etcd3Client]:
        clients: list[Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = []
            ca, cert, key = self._tls
            for scheme, host, port in self.endpoints:
                client = Etcd3Client(
                    host=host,
                    port=port,
                    protocol=scheme,
                    ca_cert=str(ca) if ca else None,
                    cert_cert=str(cert) if cert else None,
                    cert_key=str(key) if key else None,
                    timeout=self.timeout,
                    api_path=_API_PATH,
                )
                # etcd is reached directly: no proxy or netrc lookups from the environment,
                # which also cost a scan of os.environ on every request.
                client.session.trust_env = False
                clients.append(client)
            self._local.clients = clients
        return clients

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        clients = self._clients()
        start = self._preferred
        failures: list[str] = []
        for i in range(len(clients)):
            idx = (start + i) % len(clients)
            client = clients[idx]
            try:
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except (ConnectionFailedError, ConnectionTimeoutError, InternalServerError) as exc:
                # 500 from the gateway is how a member without quorum or leader answers.
                failures.append(f"{client.host}:{client.port}: {_why(exc)}")
                continue
            except Etcd3Exception as exc:
                raise Internal(f"etcd refused {path}: {_why(exc)}") from None
            except ValueError:  # an answer that is not JSON: not an etcd gateway
                raise Internal(f"{client.host}:{client.port} did not answer as etcd") from None
            self._preferred = idx
            return result
        raise Unavailable("etcd cannot be reached: " + "; ".join(failures))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        result = self._call("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0, max_revision: int = 0
    ) -> list[Entry]:
        low = start_after + "\x00" if start_after >= prefix else prefix
        end = prefix_end(prefix) or "\x00"  # "\0" as range_end means "to the last key"
        if max_revision > 0:
            # With a revision filter etcd reads the whole range for every request whatever
            # the limit, so paging would read it again per page: ask once, cut here.
            result = self._call(
                "/kv/range",
                {"key": _b64(low), "range_end": _b64(end), "max_mod_revision": str(max_revision)},
            )
            found = [_entry(kv) for kv in result.get("kvs") or []]
            return found[:limit] if limit > 0 else found
        out: list[Entry] = []
        while True:
            want = _PAGE if limit <= 0 else min(_PAGE, limit - len(out))
            result = self._call(
                "/kv/range", {"key": _b64(low), "range_end": _b64(end), "limit": want}
            )
            kvs = result.get("kvs") or []
            out.extend(_entry(kv) for kv in kvs)
            if not result.get("more") or not kvs or (limit > 0 and len(out) >= limit):
                return out
            low = out[-1].key + "\x00"

    def count(self, prefix: str) -> int:
        end = prefix_end(prefix) or "\x00"
        result = self._call(
            "/kv/range", {"key": _b64(prefix), "range_end": _b64(end), "count_only": True}
        )
        return int(result.get("count", 0))

    def revision(self) -> int:
        result = self._call("/kv/range", {"key": _b64("\x00"), "count_only": True})
        return int(result["header"]["revision"])

    # -- writes ---------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        if max(len(compares), len(ops)) > self.max_txn_ops:
            raise InvalidArgument(
                f"an etcd transaction takes at most {self.max_txn_ops} compares and ops"
            )
        body = {
            "compare": [
                {
                    "key": _b64(c.key),
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": str(c.revision),
                }
                for c in compares
            ],
            "success": [_op(op) for op in ops],
        }
        result = self._call("/kv/txn", body)
        return bool(result.get("succeeded", False))

    def put_lease(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            raise InvalidArgument("a lease needs a positive time-to-live")
        seconds = max(1, math.ceil(ttl))
        with self._leases_lock:
            held = self._leases.get(key)
        lease = 0
        if held is not None and held[1] == seconds:
            # One lease per key, kept alive: so a stopping replica has one lease to revoke.
            answer = self._call("/lease/keepalive", {"ID": str(held[0])})
            if int(answer.get("result", {}).get("TTL", 0)) > 0:  # no TTL: it had lapsed
                lease = held[0]
        if not lease:
            lease = int(self._call("/lease/grant", {"TTL": seconds, "ID": 0})["ID"])
        self._call("/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})
        with self._leases_lock:
            self._leases[key] = (lease, seconds)

    def end_lease(self, key: str) -> None:
        with self._leases_lock:
            held = self._leases.pop(key, None)
        if held is not None:
            try:
                self._call("/lease/revoke", {"ID": str(held[0])})  # its key goes with it
                return
            except Internal:
                pass  # the lease had lapsed already (etcd: "requested lease not found")
        self._call("/kv/deleterange", {"key": _b64(key)})

    def forget_history(self) -> None:
        """Compact every revision before the current one, physically: the call returns once
        etcd has removed them from its backend, not only from its index. The bytes may stay
        in free pages of the member's db file until the next `etcdctl defrag`."""
        revision = self.revision()
        try:
            self._call("/kv/compaction", {"revision": str(revision), "physical": True})
        except Internal as exc:
            if "required revision has been compacted" not in str(exc):
                raise  # else: another client compacted as far or further meanwhile

    def close(self) -> None:
        for client in getattr(self._local, "clients", None) or []:
            client.session.close()
        self._local = threading.local()


def _op(op: Put | Delete) -> dict[str, Any]:
    if isinstance(op, Put):
        return {"request_put": {"key": _b64(op.key), "value": _b64(op.value)}}
    return {"request_delete_range": {"key": _b64(op.key)}}


def _entry(kv: dict[str, Any]) -> Entry:
    return Entry(
        key=_unb64(kv["key"]).decode(),
        value=_unb64(kv.get("value", "")),
        revision=int(kv.get("mod_revision", 0)),
    )


def _why(exc: Etcd3Exception) -> str:
    """Why a request failed, in a few words ("connection refused", "timed out", "etcdserver:
    no leader"): the root cause that requests and urllib3 wrap several times over, or the
    error etcd answered with."""
    for cause in reversed(_causes(exc)):
        if isinstance(cause, ssl.SSLEOFError):
            return "TLS handshake cut off by the member (does it want a client certificate?)"
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", None) or cause.reason or "handshake failed"
            return f"TLS: {str(detail).lower()}"
        if isinstance(cause, (TimeoutError, ConnectionTimeoutError)):
            return "timed out"
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    text = (exc.detail_text or "").strip()
    try:
        answer = json.loads(text)
        text = str(answer.get("error") or answer.get("message") or text)
    except (ValueError, AttributeError):
        pass
    text = text or (str(exc.args[0]) if exc.args else "") or type(exc).__name__
    return text.splitlines()[0][:120]


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps (causes, contexts, urllib3's `reason`), outermost first."""
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is seen for seen in chain):
            continue
        chain.append(e)
        reason = getattr(e, "reason", None)
        wrapped = [e.__cause__, e.__context__, reason, *e.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))
    return chain
