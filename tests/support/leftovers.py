"""What a driver that has converged must not leave behind, read from its state store and its
pools directly: a half-made record, a key nobody owns, storage no record names, or a record
whose storage is gone."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from cryptvol.keys.manager import NEXT_SUFFIX
from cryptvol.state.repository import SnapshotRepository, VolumeRepository
from cryptvol.store.sqlite import SqliteStore
from cryptvol.system import run

DEK_PREFIX = "/cryptvol/deks/"


def loop_objects(pool_dir: Path) -> set[str]:
    """Volume and snapshot ids a loop pool holds storage for; a temporary file counts as
    itself, so it shows up as a leftover."""
    found = {p.stem for p in pool_dir.glob("*.img")}
    found |= {p.stem for p in (pool_dir / "snapshots").glob("*.img")}
    found |= {p.name for p in pool_dir.rglob("*.tmp")}
    return found


def lvm_objects(vg: str) -> set[str]:
    out = run(["lvs", "--noheadings", "-o", "lv_name", "--select", "lv_tags=cryptvol", vg],
              env={"LVM_SUPPRESS_FD_WARNINGS": "1"}).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def zfs_objects(dataset: str) -> set[str]:
    """Volume and snapshot ids a ZFS pool holds storage for: zvols by their last name
    component, snapshots by the part after `@`; a deleted volume's hidden remains keep their
    full last component, so they show up as leftovers until the pool frees them."""
    out = run(["zfs", "list", "-H", "-o", "name", "-t", "volume,snapshot", "-r", dataset]).stdout
    found = set()
    for name in (line.strip() for line in out.splitlines() if line.strip()):
        last = name.rsplit("/", 1)[-1]
        found.add(last.split("@", 1)[1] if "@" in last else last)
    return found


def leftovers(state_dir: Path, pools: dict[str, set[str]],
              of: Collection[str] = ()) -> list[str]:
    """Everything out of place, as sentences; `pools` maps a pool name to the ids it holds
    storage for (see `loop_objects`, `lvm_objects`, `zfs_objects`). With `of`, only what
    concerns those ids (other tests share the driver)."""
    store = SqliteStore(state_dir / "cryptvol.db")
    try:
        volumes = VolumeRepository(store).all()
        snapshots = SnapshotRepository(store).all()
        keys = {e.key[len(DEK_PREFIX):] for e in store.range(DEK_PREFIX)}
    finally:
        store.close()
    found: list[str] = []
    owners = {r.id: r for r in [*volumes, *snapshots]}
    for record in owners.values():
        if record.state != "ready":
            found.append(f"{record.id} is still {record.state}")
        if record.key_source == "managed" and record.id not in keys:
            found.append(f"{record.id} has no key")
        if record.pool in pools and record.id not in pools[record.pool]:
            found.append(f"{record.id} has no storage in pool {record.pool}")
    for key in keys:
        owner = owners.get(key.removesuffix(NEXT_SUFFIX))
        if owner is None:
            found.append(f"key {key} has no record")
    for pool, objects in pools.items():
        for name in objects:
            owner = owners.get(name)
            if owner is None or owner.pool != pool:
                found.append(f"{name} in pool {pool} has no record")
    return [f for f in found if not of or any(i in f for i in of)]
