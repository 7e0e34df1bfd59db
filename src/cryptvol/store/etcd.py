"""The cluster state store: etcd v3 through its native gRPC API (the client port, 2379 by
default), with stubs generated from cryptvol's own `store/proto/etcd.proto`.

gRPC, not etcd's JSON gateway: the gateway turns every JSON request into protobuf and makes
an internal gRPC hop, and re-wrapping 100,000 DEKs cost etcd 8.5 s of CPU that way against
about 3.5 s over gRPC (bench/bench_rewrap.py). The price is importing grpc and protobuf
(about 50 ms more for `keys status`), so the import waits until a store first talks to
etcd: a command that never does never pays it.

etcd already has what the `Store` contract asks for: one global revision, each key's
`mod_revision`, multi-key transactions whose compares are checked atomically, ranges with a
limit, and leases. A compare on a key's `mod_revision` equal to 0 holds exactly when the key
is absent, as in the contract.

The key manager talks to etcd directly, never through the Kubernetes API (see DESIGN.md).
Endpoints are tried in order, starting with the last one that answered; a member that
cannot serve (unreachable, too slow, without a leader) is skipped, so a cluster that keeps
quorum stays usable while one member restarts. A store with no reachable member raises
`Unavailable`; callers treat that as "not now", never as "absent".
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptvol.errors import Internal, InvalidArgument, Unavailable
from cryptvol.store.base import Compare, Delete, Entry, Put, prefix_end

# etcd refuses a transaction with more compares or more ops than --max-txn-ops (128 default).
DEFAULT_MAX_TXN_OPS = 128
# etcd (3.4) walks its index to the end of the range on every Range call, whatever the
# limit: reading 100,000 keys cost it 1.6 s of CPU in pages of 500 and 0.3 s in pages of 5,000.
_PAGE = 5000
# A physical compaction deletes old revisions 1,000 at a time and pauses 10 ms between
# batches (etcd's default pacing): 2.4 s for 100,000 re-wrapped DEKs here, so a million
# would outlast an ordinary request's timeout.
_COMPACT_TIMEOUT = 300.0
_CHANNEL_OPTIONS = (
    # A restarted member is tried again within a second, not after gRPC's default backoff
    # (which grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A range with a revision bound comes back in one answer (see `range`): no 4 MiB cap.
    ("grpc.max_receive_message_length", -1),
)
# Why a member could not serve, from gRPC's description of the failure, in a few words.
_CAUSES = (
    ("connection refused", "connection refused"),
    ("errors resolving", "cannot resolve the host name"),
    ("no route to host", "no route to host"),
    ("tsi_data_corrupted", "TLS handshake refused by the member (does it want a client"
                           " certificate?)"),
    ("handshake read failed", "TLS handshake cut off (is the member plain http?)"),
    ("failed parsing http/2", "did not answer as etcd (not gRPC)"),
    ("socket closed", "closed the connection (is the member https?)"),
)

_T = TypeVar("_T")


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


def _grpc() -> tuple[ModuleType, ModuleType, ModuleType]:
    """grpc and the etcd stubs, imported on first use.

    gRPC's core would also print its own lines about a failed connection on stderr; the
    store's error already says why in one line, so the core stays quiet unless the operator
    asked otherwise (GRPC_VERBOSITY, read when grpc is first imported)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    from cryptvol.store.gen import etcd_pb2, etcd_pb2_grpc

    return grpc, etcd_pb2, etcd_pb2_grpc


@dataclass(frozen=True)
class _Member:
    """One member's channel and the stubs on it; a channel serves every thread."""

    channel: Any
    kv: Any
    lease: Any


class EtcdStore:
    """`Store` on an etcd v3 cluster. Thread-safe: every thread shares one channel per
    member, and gRPC multiplexes their calls on it."""

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
        certificate for an etcd that asks for one (--client-cert-auth), as in RKE2.
        Nothing connects yet, so a store can be made while etcd is down."""
        self.endpoints = parse_endpoints(endpoints)
        if (cert_file is None) != (key_file is None):
            raise InvalidArgument("an etcd client certificate needs both its cert and key file")
        self._tls = (ca_file, cert_file, key_file)
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        # etcd commits concurrent proposals in one raft round and fsync; bulk writers
        # (reencrypt) keep this many transactions in flight.
        self.concurrent_writers = 4
        # Bulk readers (reencrypt) read this many keys per range and cut them into
        # transactions themselves: see _PAGE.
        self.range_page = _PAGE
        self._members: dict[int, _Member] = {}
        self._lock = threading.Lock()
        self._preferred = 0  # index of the last member that answered; tried first next time
        self._leases: dict[str, tuple[int, int]] = {}  # key → (lease id, ttl) put_lease holds

    def describe(self) -> str:
        return "etcd " + ",".join(f"{s}://{h}:{p}" for s, h, p in self.endpoints)

    # -- transport ------------------------------------------------------------------------

    def _member(self, idx: int) -> _Member:
        with self._lock:
            member = self._members.get(idx)
            if member is None:
                member = self._members[idx] = self._connect(idx)
            return member

    def _connect(self, idx: int) -> _Member:
        grpc, _, stubs = _grpc()
        scheme, host, port = self.endpoints[idx]
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        if scheme == "https":
            ca, cert, key = self._tls
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes() if ca else None,
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
            channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return _Member(channel, stubs.KVStub(channel), stubs.LeaseStub(channel))

    def _call(self, what: str, request: Callable[[_Member], _T]) -> _T:
        """`request` on the first member that can serve it; `what` names it in errors."""
        grpc, _, _ = _grpc()
        down = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        start = self._preferred
        failures: list[str] = []
        for i in range(len(self.endpoints)):
            idx = (start + i) % len(self.endpoints)
            try:
                result = request(self._member(idx))
            except grpc.RpcError as exc:
                if exc.code() not in down:
                    raise Internal(f"etcd refused {what}: {_detail(exc.details())}") from None
                _, host, port = self.endpoints[idx]
                failures.append(f"{host}:{port}: {_why(exc.code(), exc.details())}")
                continue
            self._preferred = idx
            return result
        raise Unavailable("etcd cannot be reached: " + "; ".join(failures))

    def _range(self, **fields: Any) -> Any:
        _, pb, _ = _grpc()
        request = pb.RangeRequest(**fields)
        return self._call("Range", lambda m: m.kv.Range(request, timeout=self.timeout))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        result = self._range(key=key.encode())
        return _entry(result.kvs[0]) if result.kvs else None

    def range(
        self, prefix: str, *, start_after: str = "", limit: int = 0, max_revision: int = 0
    ) -> list[Entry]:
        low = start_after + "\x00" if start_after >= prefix else prefix
        end = (prefix_end(prefix) or "\x00").encode()  # "\0" as range_end: to the last key
        if max_revision > 0:
            # With a revision filter etcd reads the whole range for every request whatever
            # the limit, so paging would read it again per page: ask once, cut here.
            result = self._range(key=low.encode(), range_end=end, max_mod_revision=max_revision)
            found = [_entry(kv) for kv in result.kvs]
            return found[:limit] if limit > 0 else found
        out: list[Entry] = []
        while True:
            want = _PAGE if limit <= 0 else min(_PAGE, limit - len(out))
            result = self._range(key=low.encode(), range_end=end, limit=want)
            out.extend(_entry(kv) for kv in result.kvs)
            if not result.more or not result.kvs or (limit > 0 and len(out) >= limit):
                return out
            low = out[-1].key + "\x00"

    def count(self, prefix: str) -> int:
        end = (prefix_end(prefix) or "\x00").encode()
        return int(self._range(key=prefix.encode(), range_end=end, count_only=True).count)

    def revision(self) -> int:
        return int(self._range(key=b"\x00", count_only=True).header.revision)

    # -- writes ---------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        return self.txn_at(compares, ops) is not None

    def txn_at(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        if max(len(compares), len(ops)) > self.max_txn_ops:
            raise InvalidArgument(
                f"an etcd transaction takes at most {self.max_txn_ops} compares and ops"
            )
        _, pb, _ = _grpc()
        request = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=c.key.encode(),
                    result=pb.Compare.EQUAL,
                    target=pb.Compare.MOD,
                    mod_revision=c.revision,
                )
                for c in compares
            ],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=op.key.encode(), value=op.value))
                if isinstance(op, Put)
                else pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=op.key.encode()))
                for op in ops
            ],
        )
        reply = self._call("Txn", lambda m: m.kv.Txn(request, timeout=self.timeout))
        return int(reply.header.revision) if reply.succeeded else None

    def put_lease(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            raise InvalidArgument("a lease needs a positive time-to-live")
        _, pb, _ = _grpc()
        seconds = max(1, math.ceil(ttl))
        with self._lock:
            held = self._leases.get(key)
        lease = 0
        # One lease per key, kept alive: so a stopping replica has one lease to revoke.
        if held is not None and held[1] == seconds and self._call(
            "LeaseKeepAlive", lambda m: self._keep_alive(m, held[0])
        ):
            lease = held[0]  # a TTL of 0: it had lapsed
        if not lease:
            grant = pb.LeaseGrantRequest(TTL=seconds, ID=0)
            granted = self._call("LeaseGrant", lambda m: m.lease.LeaseGrant(grant,
                                                                          timeout=self.timeout))
            if granted.error or not granted.ID:
                raise Internal(f"etcd refused LeaseGrant: {_detail(granted.error)}")
            lease = int(granted.ID)
        put = pb.PutRequest(key=key.encode(), value=value, lease=lease)
        self._call("Put", lambda m: m.kv.Put(put, timeout=self.timeout))
        with self._lock:
            self._leases[key] = (lease, seconds)

    def _keep_alive(self, member: _Member, lease: int) -> int:
        """Renew a lease once: one request on the keep-alive stream, one answer read, the
        stream closed. The answer's TTL; 0 when the lease is gone."""
        _, pb, _ = _grpc()
        stream = member.lease.LeaseKeepAlive(
            iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout
        )
        try:
            answer = next(stream, None)
        finally:
            stream.cancel()
        return int(answer.TTL) if answer is not None else 0

    def end_lease(self, key: str) -> None:
        _, pb, _ = _grpc()
        with self._lock:
            held = self._leases.pop(key, None)
        if held is not None:
            revoke = pb.LeaseRevokeRequest(ID=held[0])
            try:  # its key goes with it
                self._call("LeaseRevoke", lambda m: m.lease.LeaseRevoke(revoke,
                                                                       timeout=self.timeout))
                return
            except Internal:
                pass  # the lease had lapsed already (etcd: "requested lease not found")
        delete = pb.DeleteRangeRequest(key=key.encode())
        self._call("DeleteRange", lambda m: m.kv.DeleteRange(delete, timeout=self.timeout))

    def forget_history(self) -> None:
        """Compact every revision before the current one, physically: the call returns once
        etcd has removed them from its backend, not only from its index. The bytes may stay
        in free pages of the member's db file until the next `etcdctl defrag`."""
        _, pb, _ = _grpc()
        compact = pb.CompactionRequest(revision=self.revision(), physical=True)
        try:
            self._call(
                "Compact",
                lambda m: m.kv.Compact(compact, timeout=max(self.timeout, _COMPACT_TIMEOUT)),
            )
        except Internal as exc:
            if "required revision has been compacted" not in str(exc):
                raise  # else: another client compacted as far or further meanwhile

    def close(self) -> None:
        with self._lock:
            members, self._members = self._members, {}
        for member in members.values():
            member.channel.close()


def _entry(kv: Any) -> Entry:
    return Entry(key=kv.key.decode(), value=kv.value, revision=int(kv.mod_revision))


def _why(code: Any, details: str | None) -> str:
    """Why a member could not serve, in a few words ("connection refused", "timed out")."""
    if code.name == "DEADLINE_EXCEEDED":
        return "timed out"
    text = (details or "").lower()
    if "tls handshake failed" in text:  # BoringSSL's reason: "certificate signature failure"
        reason = re.search(r"OPENSSL_internal:\w+: ([^:]+)", details or "")
        return f"TLS: {reason.group(1)}" if reason else "TLS handshake failed"
    for needle, words in _CAUSES:
        if needle in text:
            return words
    return _detail(details)


def _detail(details: str | None) -> str:
    """What etcd or gRPC said, in one short line, without gRPC's address-list preamble."""
    text = re.sub(r"^failed to connect to all addresses; last error: ", "", details or "")
    text = re.sub(r"^etcdserver: ", "", text.strip())
    return (text.splitlines() or ["no reason given"])[0][:120]
