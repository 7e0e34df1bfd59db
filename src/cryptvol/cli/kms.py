"""`cryptvol kms serve`: the KMS v2 plugin for kube-apiserver, a key-manager replica.

It takes the same key store flags as `cryptvol keys` (SQLite in `--state-dir`, or etcd with
`--root-key`), reports its key set like every replica, and serves until SIGTERM, then drains
and exits 0. It starts, and answers Status "not ok" with the reason, while the store is
unreachable or the key set does not load yet; only flags that cannot work stop it (exit 1,
or 2 for a flag click itself refuses).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import click

from cryptvol.cli.keys import store_options
from cryptvol.errors import InvalidArgument
from cryptvol.keys.config import KeysConfig
from cryptvol.system import logs

log = logging.getLogger("cryptvol.kms")

DEFAULT_LISTEN = "unix:///var/run/cryptvol-kms/kms.sock"


@click.group("kms")
def kms_group() -> None:
    """The Kubernetes KMS v2 plugin (encrypts Secrets at rest with cryptvol's KEKs)."""


@kms_group.command("serve")
@click.option("--listen", envvar="CRYPTVOL_KMS_LISTEN", default=DEFAULT_LISTEN,
              show_default=True, help="unix:///path/to/kms.sock for kube-apiserver.")
@click.option("--name", envvar="CRYPTVOL_KMS_NAME", default=None,
              help="This replica's stable name in reports [default: kms-<host name>].")
@click.option("--metrics-address", envvar="CRYPTVOL_KMS_METRICS_ADDRESS", default="",
              help="HOST:PORT to serve Prometheus /metrics on (default: off).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between the replica's rounds (reload, report).")
@click.option("--ttl", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="Seconds a report lives; Encrypt stops when the key set was not confirmed"
                   " against the store for this long.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=10.0,
              show_default=True, help="Seconds to drain RPCs in flight on SIGTERM.")
@click.option("--log-json/--log-text", envvar="CRYPTVOL_LOG_JSON", default=False)
@click.option("--log-level", envvar="CRYPTVOL_LOG_LEVEL", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]))
@store_options
def serve_command(config: KeysConfig, listen: str, name: str | None, metrics_address: str,
                  interval: float, ttl: float, grace_seconds: float, log_json: bool,
                  log_level: str) -> None:
    """Serve the KMS v2 KeyManagementService on a unix socket until SIGTERM."""
    from cryptvol.keys.config import open_keys
    from cryptvol.keys.metrics import KeyMetrics
    from cryptvol.keys.replica import Replica
    from cryptvol.keys.sealed import Sealer
    from cryptvol.keys.usage import KekUsage
    from cryptvol.kms.server import KmsServer
    from cryptvol.rpc.endpoint import claim_socket, socket_path
    from cryptvol.system.metrics import new_registry, parse_address, serve_metrics
    from cryptvol.system.signals import StopSignals

    stop_signals = StopSignals()
    logs.configure(log_json, log_level)
    name = name or f"kms-{socket.gethostname()}"
    # Flags that cannot work are refused before anything starts or is written.
    claim_socket(socket_path(listen))
    if metrics_address:
        parse_address(metrics_address)
    _check_root_key(config.root_key)
    if not config.etcd_endpoints:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    registry = new_registry()
    store, manager = open_keys(config, lazy=True, metrics=KeyMetrics(registry))
    usage = KekUsage(store, name)
    replica = Replica(manager, name, role="kms", interval=interval, ttl=ttl, count_interval=0,
                      tasks=[usage.flush])
    server = KmsServer(Sealer(replica, usage), listen, registry)
    metrics = serve_metrics(registry, metrics_address) if metrics_address else None
    server.start()
    replica.start()
    log.info("kms replica started", extra={"replica": name, "keys": config.describe()})
    log.info("draining", extra={"signal": stop_signals.wait()})
    server.stop(grace_seconds)
    replica.stop()
    try:
        usage.flush(force=True)
    except Exception as exc:
        log.warning("could not record the last KEK use at exit: %s", type(exc).__name__)
    if metrics is not None:
        metrics.stop()
    store.close()
    log.info("stopped")


def _check_root_key(path: Path | None) -> None:
    # A missing root key never heals by waiting (it is a mounted Secret or a file the
    # operator made): refuse it at start rather than answer "not ok" forever.
    if path is not None and not path.is_file():
        raise InvalidArgument(
            f"the root key file {path} does not exist or is not a file: mount the cluster's"
            " root key there (make a new one only for a new cluster: cryptvol keys"
            " init-root-key)"
        )
