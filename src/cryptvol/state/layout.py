"""Where each kind of record lives in the store. Every key cryptvol's state uses is made here.

A record kind has two prefixes: one for records by id, one for the CreateVolume /
CreateSnapshot name that maps to the id, so a retried create finds the object it made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordLayout:
    records: str
    names: str

    def record_key(self, record_id: str) -> str:
        return self.records + record_id

    def name_key(self, name: str) -> str:
        return self.names + name


VOLUMES = RecordLayout(records="/cryptvol/volumes/", names="/cryptvol/names/")
SNAPSHOTS = RecordLayout(records="/cryptvol/snapshots/", names="/cryptvol/snapshot-names/")
NODES = "/cryptvol/nodes/"
# The store's identity (see `state.identity`): written once, at the first start.
IDENTITY_KEY = "/cryptvol/identity"
# Pool volumes without a record that an operator accepted with `serve --adopt`, by id.
ADOPTED_ORPHANS = "/cryptvol/adopted-orphans/"


def node_probe_key(node_id: str) -> str:
    """The host probe a node's driver caches, for `cryptvol doctor` of another node."""
    return f"{NODES}{node_id}/probe"
