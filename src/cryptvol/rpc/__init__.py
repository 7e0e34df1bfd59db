"""The gRPC plumbing every cryptvol server shares (the CSI driver and the KMS plugin).

- `endpoint`: the unix socket a server listens on, and claiming it safely.
- `status`: the one table from cryptvol's errors to gRPC status codes.
- `interceptor`: one log line per RPC, errors turned into codes, request metrics.
- `metrics`: the request counters and latency histograms, on a registry passed in.
- `server`: start, and stop with a drain (`system.signals` waits for the SIGTERM).
"""
