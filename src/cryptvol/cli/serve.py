"""`cryptvol serve`: run the CSI driver until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from cryptvol.cli.config import (
    DEFAULT_POOL_DIR,
    ServeSettings,
    SettingsCommand,
    load_config_file,
    settings_from,
)

log = logging.getLogger("cryptvol.serve")


def _load_defaults(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = load_config_file(value)
    return value


@click.command("serve", cls=SettingsCommand)
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), envvar="CRYPTVOL_CONFIG",
              callback=_load_defaults, is_eager=True, expose_value=False,
              help="TOML file with a [serve] table (lowest precedence).")
@click.option("--endpoint", envvar="CRYPTVOL_ENDPOINT", default=ServeSettings().endpoint,
              show_default=True, help="The CSI socket to serve on: unix:///path/to/csi.sock.")
@click.option("--node-id", envvar="CRYPTVOL_NODE_ID", default=None,
              help="This node's name (default: the host name).")
@click.option("--role", envvar="CRYPTVOL_ROLE", type=click.Choice(["all", "controller", "node"]),
              default="all", show_default=True,
              help="CSI services to serve besides Identity; node needs dm-crypt.")
@click.option("--state-dir", envvar="CRYPTVOL_STATE_DIR",
              type=click.Path(path_type=Path, readable=False),
              default=str(ServeSettings().state_dir), show_default=True,
              help="Folder of the SQLite state store and the local KEK file (0700).")
@click.option("--pool", envvar="CRYPTVOL_POOL", multiple=True,
              help="A storage pool, NAME=loop:DIR, NAME=lvmthin:VG/THINPOOL or "
                   "NAME=zfs:POOL/DATASET; repeat for more. The first is the default; a "
                   "StorageClass picks another with its `pool` parameter.")
@click.option("--pool-dir", envvar="CRYPTVOL_POOL_DIR",
              type=click.Path(path_type=Path, readable=False), default=None,
              help="Shorthand for one loop pool, default=loop:DIR: one sparse backing file "
                   f"per volume (default: {DEFAULT_POOL_DIR}).")
@click.option("--log-json/--log-text", envvar="CRYPTVOL_LOG_JSON", default=False,
              help="Log one JSON object per line instead of text.")
@click.option("--log-level", envvar="CRYPTVOL_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="How much to log; debug adds request bodies, secrets redacted.")
@click.option("--grace-seconds", envvar="CRYPTVOL_GRACE_SECONDS", type=float, default=30.0,
              show_default=True, help="On SIGTERM, how long RPCs in flight may finish.")
@click.option("--metrics-address", envvar="CRYPTVOL_METRICS_ADDRESS", default="",
              help="HOST:PORT to serve Prometheus /metrics on (default: off).")
@click.option("--etcd-endpoints", envvar="CRYPTVOL_ETCD_ENDPOINTS", default="",
              help="Comma-separated etcd URLs; state then lives in etcd (default: SQLite).")
@click.option("--root-key", envvar="CRYPTVOL_ROOT_KEY", type=click.Path(path_type=Path),
              default=None, help="File of the root key sealing the KEK set (needed with etcd).")
@click.option("--etcd-ca-file", envvar="CRYPTVOL_ETCD_CA_FILE", type=click.Path(path_type=Path),
              default=None, help="CA bundle of the etcd members' certificates (https).")
@click.option("--etcd-cert-file", envvar="CRYPTVOL_ETCD_CERT_FILE",
              type=click.Path(path_type=Path), default=None,
              help="Client certificate for etcd (with --etcd-key-file).")
@click.option("--etcd-key-file", envvar="CRYPTVOL_ETCD_KEY_FILE",
              type=click.Path(path_type=Path), default=None,
              help="Key of the etcd client certificate.")
@click.option("--kata-runtime-handlers", envvar="CRYPTVOL_KATA_RUNTIME_HANDLERS", default=None,
              help="RuntimeClass handlers that mean Kata, comma-separated shell patterns "
                   "(default: kata*); a pod under one gets its volumes as Kata direct "
                   "volumes. Empty: that trigger is off.")
@click.option("--kubeconfig", envvar="CRYPTVOL_KUBECONFIG", type=click.Path(path_type=Path),
              default=None, help="Kubeconfig of the Kubernetes API (default: in-cluster).")
@click.option("--kata-direct-volumes-dir", envvar="CRYPTVOL_KATA_DIRECT_VOLUMES_DIR",
              type=click.Path(path_type=Path), default=None,
              help="Kata's direct-volume folder (default: "
                   "/run/kata-containers/shared/direct-volumes).")
@click.option("--kata-sandbox-dirs", envvar="CRYPTVOL_KATA_SANDBOX_DIRS", default=None,
              help="Kata's sandbox folders holding shim-monitor.sock: the Go runtime's, then "
                   "runtime-rs's (default: /run/vc/sbs,/run/kata).")
@click.option("--kubelet-dir", envvar="CRYPTVOL_KUBELET_DIR", type=click.Path(path_type=Path),
              default=None,
              help="kubelet's root dir: node requests may name paths only inside it "
                   "(default: /var/lib/kubelet).")
@click.option("--overcommit-ratio", envvar="CRYPTVOL_OVERCOMMIT_RATIO", type=float,
              default=None,
              help="A pool promises volumes of at most its size times this (default: 1.0, "
                   "never more than it holds).")
@click.option("--adopt", envvar="CRYPTVOL_ADOPT", is_flag=True, default=False,
              help="Start over a state store that does not match this node (empty, swapped, "
                   "or missing records), list the pool volumes it cannot unlock, and mark "
                   "everything as its own. For recovery, once: see the README.")
def serve_command(**options: Any) -> None:
    """Serve the CSI Identity, Controller and Node services on a unix socket."""
    # Imported here, not at the top: every other command starts without the server stack.
    from cryptvol.csi.server import CsiServer
    from cryptvol.engine.driver import Driver, DriverSettings
    from cryptvol.keys.config import KeysConfig
    from cryptvol.rpc.endpoint import claim_socket, socket_path
    from cryptvol.system import logs
    from cryptvol.system.metrics import new_registry, serve_metrics
    from cryptvol.system.signals import StopSignals

    stop_signals = StopSignals()
    settings = settings_from(options)
    pools = settings.pool_specs()
    kata = settings.kata_settings()
    # What the flags name is checked before the driver starts its threads, so a refusal
    # ends the process cleanly, with one line, and nothing made.
    claim_socket(socket_path(settings.endpoint))
    logs.configure(settings.log_json, settings.log_level)
    registry = new_registry()
    metrics = serve_metrics(registry, settings.metrics_address) \
        if settings.metrics_address else None
    keys = KeysConfig(state_dir=settings.state_dir, etcd_endpoints=settings.etcd_endpoints,
                      root_key=settings.root_key, etcd_ca_file=settings.etcd_ca_file,
                      etcd_cert_file=settings.etcd_cert_file,
                      etcd_key_file=settings.etcd_key_file)
    try:
        driver = Driver(DriverSettings(node_id=settings.node_id, role=settings.role,
                                       state_dir=settings.state_dir, pools=pools, keys=keys,
                                       kata=kata, kubelet_dir=settings.kubelet_dir,
                                       overcommit_ratio=settings.overcommit_ratio,
                                       adopt=settings.adopt),
                        registry)
        try:
            server = CsiServer(driver, settings.endpoint, registry=registry)
            server.start()
        except BaseException:
            driver.close()
            raise
    except BaseException:
        if metrics is not None:
            metrics.stop()
        raise
    log.info("draining", extra={"signal": stop_signals.wait()})
    server.stop(settings.grace_seconds)
    if metrics is not None:
        metrics.stop()
    driver.close()
    log.info("stopped")
