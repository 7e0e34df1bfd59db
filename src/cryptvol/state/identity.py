"""The state store's identity: a random id written into the store at the first start, and
into markers kept apart from it (a 0600 file in the state dir, beside the KEK file; one in
each pool).

A store that lost its content, was replaced by an empty one, or was swapped for another
node's no longer holds the id the markers name. The driver checks this at every start
(`engine.startup`) and refuses to start over such a store: starting empty would silently
orphan every volume's key.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptvol.state.layout import ADOPTED_ORPHANS, IDENTITY_KEY
from cryptvol.store.base import Compare, Put, Store
from cryptvol.system.files import read_marker_file, write_private_file

MARKER_FILE = "store-id"


@dataclass(frozen=True)
class StoreIdentity:
    id: str
    created: float


def read_identity(store: Store) -> StoreIdentity | None:
    entry = store.get(IDENTITY_KEY)
    if entry is None:
        return None
    doc = json.loads(entry.value)
    return StoreIdentity(str(doc["id"]), float(doc["created"]))


def create_identity(store: Store) -> StoreIdentity:
    """Give the store a new identity, unless another process gave it one first."""
    made = StoreIdentity(f"store-{secrets.token_hex(16)}", time.time())
    value = json.dumps({"id": made.id, "created": made.created}).encode()
    if store.txn([Compare(IDENTITY_KEY, 0)], [Put(IDENTITY_KEY, value)]):
        return made
    found = read_identity(store)
    assert found is not None  # the compare failed because it exists
    return found


def record_adopted_orphans(store: Store, by_pool: dict[str, list[str]]) -> None:
    """Remember pool volumes without a record that `--adopt` accepted, so the next start
    does not refuse them again (and `cryptvol state check` still lists them)."""
    now = time.time()
    ops = [Put(ADOPTED_ORPHANS + vid, json.dumps({"pool": pool, "adopted": now}).encode())
           for pool, ids in by_pool.items() for vid in ids]
    if ops:
        store.txn([], ops)


def adopted_orphans(store: Store) -> set[str]:
    return {e.key[len(ADOPTED_ORPHANS):] for e in store.range(ADOPTED_ORPHANS)}


def marker_path(state_dir: Path) -> Path:
    return Path(state_dir) / MARKER_FILE


def read_marker(state_dir: Path) -> str | None:
    """The store id the state dir's marker names, or None when there is no marker."""
    return read_marker_file(marker_path(state_dir))


def write_marker(state_dir: Path, store_id: str) -> None:
    if read_marker(state_dir) != store_id:
        write_private_file(marker_path(state_dir), f"{store_id}\n".encode())
