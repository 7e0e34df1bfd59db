"""The cluster state store: etcd v3, through its JSON gateway, over the standard library's
HTTP client (one kept-alive connection per member and thread: a request costs a tenth of a
millisecond here, and `cryptvol keys status` imports no HTTP stack of its own).

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
import http.client
import json
import math
import select
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptvol.errors import Internal, InvalidArgument, Unavailable
from cryptvol.store.base import Compare, Delete, Entry, Put, prefix_end

# etcd refuses a transaction with more compares or more ops than --max-txn-ops (128 default).
DEFAULT_MAX_TXN_OPS = 128
_PAGE = 1000
# 3.4 and later serve the gateway under /v3/; naming it skips a discovery round trip.
_API_PATH = "/v3"
# Answers that mean "this member cannot serve now, try another": the gateway's 500 is how a
# member without quorum or leader answers.
_MEMBER_DOWN = (500, 502, 503, 504, 408)


class _MemberDown(Exception):
    """One member could not serve a request; the message says why in a few words."""


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
        self._ssl: ssl.SSLContext | None = None
        self._preferred = 0  # index of the last member that answered; tried first next time
        self._leases: dict[str, tuple[int, int]] = {}  # key → (lease id, ttl) put_lease holds
        self._leases_lock = threading.Lock()

    def describe(self) -> str:
        return "etcd " + ",".join(f"{s}://{h}:{p}" for s, h, p in self.endpoints)

    # -- transport ------------------------------------------------------------------------

    def _connection(self, idx: int) -> http.client.HTTPConnection:
        """This thread's kept-alive connection to member `idx`, made again when the member
        has closed it."""
        conns: dict[int, http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(idx)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()
            conn = None
        if conn is None:
            scheme, host, port = self.endpoints[idx]
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=self._tls_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conns[idx] = conn
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        with self._leases_lock:
            if self._ssl is None:
                ca, cert, key = self._tls
                context = ssl.create_default_context(cafile=str(ca) if ca else None)
                if cert is not None and key is not None:
                    context.load_cert_chain(str(cert), str(key))
                self._ssl = context
            return self._ssl

    def _post(self, idx: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = self._connection(idx)
        try:
            conn.request("POST", _API_PATH + path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _MemberDown(_why(exc)) from None
        if answer.status in _MEMBER_DOWN:
            raise _MemberDown(_etcd_message(data, answer.reason))
        if answer.status != 200:
            raise Internal(f"etcd refused {path}: {_etcd_message(data, answer.reason)}")
        try:
            result = json.loads(data)
        except ValueError:  # an answer that is not JSON: not an etcd gateway
            raise Internal(f"{conn.host}:{conn.port} did not answer as etcd") from None
        if not isinstance(result, dict):
            raise Internal(f"{conn.host}:{conn.port} did not answer as etcd")
        return result

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        start = self._preferred
        failures: list[str] = []
        for i in range(len(self.endpoints)):
            idx = (start + i) % len(self.endpoints)
            try:
                result = self._post(idx, path, body)
            except _MemberDown as exc:
                _, host, port = self.endpoints[idx]
                failures.append(f"{host}:{port}: {exc}")
                continue
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
        for conn in (getattr(self._local, "conns", None) or {}).values():
            conn.close()
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


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether a kept-alive connection's socket has been closed by the member (readable
    with nothing asked: an end of file or a reset), so it must not carry a request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _why(exc: BaseException) -> str:
    """Why a request failed, in a few words ("connection refused", "timed out")."""
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS handshake cut off by the member (does it want a client certificate?)"
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or exc.reason or "handshake failed"
        return f"TLS: {str(detail).lower()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return type(exc).__name__


def _etcd_message(data: bytes, reason: str) -> str:
    """The error etcd answered with, in one short line."""
    text = data.decode(errors="replace").strip()
    try:
        answer = json.loads(text)
        text = str(answer.get("error") or answer.get("message") or text)
    except (ValueError, AttributeError):
        pass
    text = text or reason or "no reason given"
    return text.splitlines()[0][:120]
