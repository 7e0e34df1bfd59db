"""`cryptvol state`: the state store itself (volume records, wrapped DEKs, the key set).

`check` compares the three halves of every volume: its record, its backing volume in a
pool and its wrapped data key, and lists each half that has lost the others.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click

from cryptvol.cli.config import DEFAULT_POOL_DIR
from cryptvol.cli.keys import store_options
from cryptvol.keys.config import KeysConfig, open_store
from cryptvol.pools.registry import PoolSpec, open_pools, parse_pool_spec
from cryptvol.state.records import DEFAULT_POOL


@click.group("state")
def state_group() -> None:
    """The state store: consistency checks."""


@state_group.command("check")
@store_options
@click.option("--pool", "pools", envvar="CRYPTVOL_POOL", multiple=True,
              help="A pool as the driver is given it, NAME=KIND:LOCATION; repeat for more.")
@click.option("--pool-dir", envvar="CRYPTVOL_POOL_DIR", type=click.Path(path_type=Path),
              default=None, help=f"Shorthand for one loop pool (default: {DEFAULT_POOL_DIR}).")
@click.option("--node-id", envvar="CRYPTVOL_NODE_ID", default=None,
              help="This node's name, as the driver is given it (default: the host name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check_command(config: KeysConfig, pools: tuple[str, ...], pool_dir: Path | None,
                  node_id: str | None, as_json: bool) -> None:
    """List orphans both ways: pool volumes without a record, records without a backing
    volume or a data key, data keys without a record. Exits 1 when it finds any.

    Reads only; safe while the driver runs. Give it the driver's --pool flags: records in a
    pool it is not given are listed as unchecked.
    """
    from cryptvol.engine.audit import find_orphans
    from cryptvol.state.repository import VolumeRepository

    specs = tuple(parse_pool_spec(p) for p in pools) or (
        PoolSpec(DEFAULT_POOL, "loop", str(pool_dir or DEFAULT_POOL_DIR)),)
    if not config.etcd_endpoints and not config.db_path.exists():
        raise click.ClickException(f"there is no state store at {config.db_path}")
    store = open_store(config)
    try:
        orphans = find_orphans(VolumeRepository(store), open_pools(specs),
                               node_id or socket.gethostname())
    finally:
        store.close()
    found = {
        "pool volumes without a record": [
            f"{pool} {vid}{' (accepted by --adopt)' if vid in orphans.adopted else ''}"
            for pool, ids in orphans.unrecorded.items() for vid in ids],
        "records without a backing volume": [f"{r.id} (name {r.name}, pool {r.pool})"
                                             for r in orphans.unbacked],
        "records in a pool not given (unchecked)": [f"{r.id} (pool {r.pool})"
                                                    for r in orphans.unconfigured],
        "records without a data key": [f"{r.id} (name {r.name})" for r in orphans.keyless],
        "data keys without a record": list(orphans.unowned_keys),
    }
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for what, items in found.items():
            click.echo(f"{what}: {len(items)}")
            for item in items:
                click.echo(f"  {item}")
    if orphans:
        raise SystemExit(1)
