"""`cryptvol serve`: run the CSI driver until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from cryptvol.cli.config import DEFAULT_POOL_DIR, ServeSettings, load_config_file
from cryptvol.csi.server import CsiServer
from cryptvol.engine.driver import Driver, DriverSettings
from cryptvol.errors import CryptvolError
from cryptvol.keys.config import KeysConfig
from cryptvol.system import logs

log = logging.getLogger("cryptvol.serve")


def _load_defaults(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = load_config_file(value)
    return value


@click.command("serve")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), envvar="CRYPTVOL_CONFIG",
              callback=_load_defaults, is_eager=True, expose_value=False,
              help="TOML file with a [serve] table (lowest precedence).")
@click.option("--endpoint", envvar="CRYPTVOL_ENDPOINT", default=ServeSettings().endpoint,
              show_default=True, help="unix:///path/to/csi.sock")
@click.option("--node-id", envvar="CRYPTVOL_NODE_ID", default=None,
              help="This node's name (default: the host name).")
@click.option("--role", envvar="CRYPTVOL_ROLE", type=click.Choice(["all", "controller", "node"]),
              default="all", show_default=True)
@click.option("--state-dir", envvar="CRYPTVOL_STATE_DIR", type=click.Path(path_type=Path),
              default=str(ServeSettings().state_dir), show_default=True)
@click.option("--pool", envvar="CRYPTVOL_POOL", multiple=True,
              help="A storage pool, NAME=loop:DIR, NAME=lvmthin:VG/THINPOOL or "
                   "NAME=zfs:POOL/DATASET; repeat for more. The first is the default; a "
                   "StorageClass picks another with its `pool` parameter.")
@click.option("--pool-dir", envvar="CRYPTVOL_POOL_DIR", type=click.Path(path_type=Path),
              default=None, help="Shorthand for one loop pool, default=loop:DIR "
              f"(default: {DEFAULT_POOL_DIR}).")
@click.option("--log-json/--log-text", envvar="CRYPTVOL_LOG_JSON", default=False)
@click.option("--log-level", envvar="CRYPTVOL_LOG_LEVEL", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--grace-seconds", envvar="CRYPTVOL_GRACE_SECONDS", type=float, default=30.0)
@click.option("--etcd-endpoints", envvar="CRYPTVOL_ETCD_ENDPOINTS", default="",
              help="Comma-separated etcd URLs; state then lives in etcd (default: SQLite).")
@click.option("--root-key", envvar="CRYPTVOL_ROOT_KEY", type=click.Path(path_type=Path),
              default=None, help="File of the root key sealing the KEK set (needed with etcd).")
@click.option("--etcd-ca-file", envvar="CRYPTVOL_ETCD_CA_FILE", type=click.Path(path_type=Path),
              default=None)
@click.option("--etcd-cert-file", envvar="CRYPTVOL_ETCD_CERT_FILE",
              type=click.Path(path_type=Path), default=None)
@click.option("--etcd-key-file", envvar="CRYPTVOL_ETCD_KEY_FILE",
              type=click.Path(path_type=Path), default=None)
@click.option("--kubelet-dir", envvar="CRYPTVOL_KUBELET_DIR", type=click.Path(path_type=Path),
              default=str(ServeSettings().kubelet_dir), show_default=True,
              help="kubelet's root dir: node requests may name paths only inside it.")
@click.option("--overcommit-ratio", envvar="CRYPTVOL_OVERCOMMIT_RATIO", type=float,
              default=1.0, show_default=True,
              help="A pool promises volumes of at most its size times this (1.0: never more "
                   "than it holds).")
@click.option("--adopt", envvar="CRYPTVOL_ADOPT", is_flag=True, default=False,
              help="Start over a state store that does not match this node (empty, swapped, "
                   "or missing records), list the pool volumes it cannot unlock, and mark "
                   "everything as its own. For recovery, once: see the README.")
def serve_command(**options: Any) -> None:
    """Serve the CSI Identity, Controller and Node services on a unix socket."""
    options = {k: v for k, v in options.items() if v is not None and v != ()}
    settings = ServeSettings.model_validate(options)
    logs.configure(settings.log_json, settings.log_level)
    try:
        keys = KeysConfig(state_dir=settings.state_dir, etcd_endpoints=settings.etcd_endpoints,
                          root_key=settings.root_key, etcd_ca_file=settings.etcd_ca_file,
                          etcd_cert_file=settings.etcd_cert_file,
                          etcd_key_file=settings.etcd_key_file)
        driver = Driver(DriverSettings(node_id=settings.node_id, role=settings.role,
                                       state_dir=settings.state_dir,
                                       pools=settings.pool_specs(), keys=keys,
                                       kubelet_dir=settings.kubelet_dir,
                                       overcommit_ratio=settings.overcommit_ratio,
                                       adopt=settings.adopt))
        server = CsiServer(driver, settings.endpoint)
        server.start()
    except CryptvolError as exc:
        raise click.ClickException(str(exc)) from None
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("draining", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    server.stop(settings.grace_seconds)
    driver.close()
    log.info("stopped")
