"""`cryptvol state`: the state store itself (volume records, wrapped DEKs, the key set).

A backup of the state store is half of what restores volumes; the other half is the KEKs
that wrap their DEKs (`cryptvol keys export`). README.md, "Backup and restore", gives the
whole procedure. `check` compares the three halves of every volume and snapshot: its record,
its storage in a pool and its wrapped data key, and lists each half that has lost the others.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click

from cryptvol.cli.config import DEFAULT_POOL_DIR
from cryptvol.cli.keys import store_options
from cryptvol.errors import FailedPrecondition
from cryptvol.keys.config import KeysConfig, open_store
from cryptvol.pools.registry import PoolSpec, open_pools, parse_pool_spec
from cryptvol.state.records import DEFAULT_POOL


@click.group("state")
def state_group() -> None:
    """The state store: consistent backups, restoring one, consistency checks."""


def _sqlite_only(config: KeysConfig, what: str) -> None:
    if config.etcd_endpoints:
        raise FailedPrecondition(
            f"the state lives in etcd ({config.etcd_endpoints}): {what} with etcd's own tools "
            "(`etcdctl snapshot save FILE`; `etcdutl snapshot restore FILE`), and keep the "
            "root key file apart from the snapshot"
        )


@state_group.command("backup")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@store_options
def backup_command(config: KeysConfig, file: Path, force: bool) -> None:
    """Write a consistent copy of the SQLite state store to FILE (0600).

    Safe while the driver runs. The copy holds wrapped DEKs, not the KEKs that unwrap them:
    back those up with `cryptvol keys export`.
    """
    from cryptvol.store.sqlite_backup import backup

    _sqlite_only(config, "back it up")
    copied = backup(config.db_path, file, replace=force)
    click.echo(f"wrote a copy of {config.db_path} to {copied.path} (mode 0600, "
               f"{copied.entries} entries, {copied.bytes} bytes)")


@state_group.command("restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--force", is_flag=True, help="Replace a state store that still holds state.")
@store_options
def restore_command(config: KeysConfig, file: Path, force: bool) -> None:
    """Put the backup FILE in place of the state store; the driver must be stopped.

    Refuses a store that holds state unless --force. Then restore the KEKs with
    `cryptvol keys import`.
    """
    from cryptvol.store.sqlite_backup import restore

    _sqlite_only(config, "restore it")
    copied = restore(file, config.db_path, replace=force)
    click.echo(f"restored {copied.entries} entries from {file} into {copied.path}; "
               "next: cryptvol keys import, then start the driver")


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
    from cryptvol.state.repository import SnapshotRepository, VolumeRepository

    specs = tuple(parse_pool_spec(p) for p in pools) or (
        PoolSpec(DEFAULT_POOL, "loop", str(pool_dir or DEFAULT_POOL_DIR)),)
    store = open_store(config, readonly=True)
    try:
        orphans = find_orphans(VolumeRepository(store), SnapshotRepository(store),
                               open_pools(specs), node_id or socket.gethostname())
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
