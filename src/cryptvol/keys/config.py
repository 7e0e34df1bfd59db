"""Where the keys layer keeps its state, and how to open it: one place for the CLI and serve.

- No etcd endpoints: the embedded SQLite store `<state_dir>/cryptvol.db`.
- etcd endpoints: the etcd store; the KEK set then must be sealed by a root key file
  (`root_key`), since replicas on different machines share it through etcd.
- A root key file with SQLite keeps the KEK set sealed in the SQLite store; without one, the
  local provider keeps KEKs in `<state_dir>/kek.json`.

A root key file that is named must exist: only `cryptvol keys init-root-key` makes one, so a
mistyped path is refused before anything is opened or written.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.store.base import Store
from cryptvol.store.sqlite import DB_FILE, SqliteStore

if TYPE_CHECKING:  # imported where used: `keys status` needs neither cryptography nor them
    from cryptvol.keys.kek import KekProvider
    from cryptvol.keys.manager import KeyManager
    from cryptvol.keys.metrics import KeyMetrics

DEFAULT_STATE_DIR = Path("/var/lib/cryptvol/state")  # as `cryptvol serve`


@dataclass(frozen=True)
class KeysConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    etcd_endpoints: str = ""
    root_key: Path | None = None
    etcd_timeout: float = 5.0
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.etcd_endpoints and self.root_key is None:
            raise InvalidArgument(
                "with etcd endpoints, give a root key file (--root-key): replicas on other"
                " machines must open the same KEKs, which a local KEK file cannot give them"
            )
        if self.root_key is not None:
            _check_root_key_file(self.root_key)

    def describe(self) -> str:
        store = f"etcd {self.etcd_endpoints}" if self.etcd_endpoints else str(self.db_path)
        keks = f"root key {self.root_key}" if self.root_key else str(self.state_dir / "kek.json")
        return f"store {store}, KEKs by {keks}"

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILE


def missing_root_key(path: Path) -> str:
    return (
        f"the root key file {path} does not exist: give the root key the cluster uses"
        f" (only `cryptvol keys init-root-key {path}` makes a new one)"
    )


def _check_root_key_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FailedPrecondition(missing_root_key(path)) from None
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the root key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise FailedPrecondition(f"the root key file {path} is not a regular file")


def open_store(config: KeysConfig, *, readonly: bool = False, existing: bool = False) -> Store:
    """The store; for etcd this does not connect yet, so it works while etcd is down.

    `readonly`: for commands that only look; the SQLite store is then never created, and
    its absence is NotFound. `existing`: for commands that change a store that must be
    there already (rotation); its absence is NotFound too.
    """
    if config.etcd_endpoints:
        from cryptvol.store.etcd import EtcdStore  # only a store on etcd needs it

        return EtcdStore(
            config.etcd_endpoints,
            timeout=config.etcd_timeout,
            ca_file=config.etcd_ca_file,
            cert_file=config.etcd_cert_file,
            key_file=config.etcd_key_file,
        )
    if existing and not readonly:
        SqliteStore(config.db_path, readonly=True).close()  # NotFound where there is none
    return SqliteStore(config.db_path, readonly=readonly)


def open_provider(config: KeysConfig) -> KekProvider:
    if config.root_key is not None:
        from cryptvol.keys.kek_rootkey import RootKeyProvider

        return RootKeyProvider(config.root_key)
    from cryptvol.keys.kek_local import LocalKekProvider

    return LocalKekProvider(config.state_dir)


def open_keys(
    config: KeysConfig, *, lazy: bool = False, metrics: KeyMetrics | None = None
) -> tuple[Store, KeyManager]:
    """Store and key manager. With `lazy` nothing raises for a missing key set or KEK: the
    manager stays not ready, with the reason, until `reload()` works (replicas use this).
    `metrics` puts the key manager's metrics on the process's registry."""
    from cryptvol.keys.manager import KeyManager

    store = open_store(config)
    try:
        return store, KeyManager(store, open_provider(config), lazy=lazy, metrics=metrics)
    except BaseException:
        store.close()
        raise
