"""`cryptvol state`: the state store itself (volume records, wrapped DEKs, the key set).

A backup of the state store is half of what restores volumes; the other half is the KEKs
that wrap their DEKs (`cryptvol keys export`). README.md, "Backup and restore", gives the
whole procedure.
"""

from __future__ import annotations

from pathlib import Path

import click

from cryptvol.cli.keys import store_options
from cryptvol.errors import FailedPrecondition
from cryptvol.keys.config import KeysConfig


@click.group("state")
def state_group() -> None:
    """The state store: consistent backups, and restoring one."""


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
