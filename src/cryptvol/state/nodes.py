"""What a node's driver tells the others about its host."""

from __future__ import annotations

from cryptvol.state.layout import node_probe_key
from cryptvol.store.base import Put, Store


def save_host_probe(store: Store, node_id: str, probe_json: str) -> None:
    store.txn([], [Put(node_probe_key(node_id), probe_json.encode())])
