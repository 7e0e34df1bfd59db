"""Request metrics of a gRPC server: counts by method and code, latency by method."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# From a KMS call (tens of microseconds) to a CSI stage under emulation (a minute).
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


class RpcMetrics:
    """`<prefix>_requests_total{method,code}` and `<prefix>_request_duration_seconds{method}`
    on `registry`; the prefix names the server (`cryptvol_csi`, `cryptvol_kms`)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(
            f"{prefix}_requests", "RPCs answered, by method and gRPC status code",
            ["method", "code"], registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_request_duration_seconds", "Time to answer an RPC, by method",
            ["method"], registry=registry, buckets=_BUCKETS,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.duration.labels(method=method).observe(seconds)
