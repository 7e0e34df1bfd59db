"""A driver never starts empty over evidence of an earlier life, nor over another store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cryptvol.engine.startup import (
    StartRefused,
    check_store_identity,
    kek_evidence,
    prepare_state_dir,
)
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.pools.loop import open_pool
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state import identity
from cryptvol.state.records import LuksRecord, VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.store.sqlite import SqliteStore

MIB = 1024 * 1024


class Node:
    """A node's state dir, one loop pool, and whatever store it is started with."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        self.pools = PoolRegistry([open_pool("default", str(tmp_path / "pool"))])
        self.stores: list[SqliteStore] = []

    def store(self, name: str = "cryptvol.db") -> VolumeRepository:
        store = SqliteStore(self.state_dir / name)
        self.stores.append(store)
        return VolumeRepository(store)

    def start(self, volumes: VolumeRepository, adopt: bool = False) -> identity.StoreIdentity:
        return check_store_identity(volumes.store, "the-store",
                                    kek_evidence(self.state_dir, local_keks=True),
                                    self.pools, volumes, adopt=adopt)

    def create_volume(self, volumes: VolumeRepository, volume_id: str) -> None:
        volumes.insert(VolumeRecord(
            id=volume_id, name=volume_id, capacity_bytes=MIB, backing_bytes=2 * MIB,
            parameters={}, fs_type="ext4", key_source="managed", node_id="n",
            luks=LuksRecord(format={}, open={}, reasons=[]), state="ready"))
        self.pools.default.provisioner.create(volume_id, 2 * MIB)

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def node(tmp_path: Path):
    made = Node(tmp_path)
    yield made
    made.close()


def test_a_first_start_gives_the_store_an_identity_and_marks_the_node(node: Node) -> None:
    volumes = node.store()
    made = node.start(volumes)
    assert identity.read_marker(node.state_dir) == made.id
    assert node.pools.default.provisioner.store_marker() == made.id
    assert stat.S_IMODE(identity.marker_path(node.state_dir).stat().st_mode) == 0o600
    node.create_volume(volumes, "cv-a")
    assert node.start(volumes) == made  # the next start finds all of it in order


@pytest.mark.parametrize("sign", ["marker", "kek file", "pool volume"])
def test_an_empty_store_over_any_sign_of_an_earlier_life_is_refused(node: Node, sign) -> None:
    if sign == "marker":
        identity.write_marker(node.state_dir, "store-earlier")
    elif sign == "kek file":
        LocalKekProvider(node.state_dir).create("kek-1")
    else:
        node.pools.default.provisioner.create("cv-a", MIB)
    with pytest.raises(StartRefused) as info:
        node.start(node.store())
    message = str(info.value)
    assert "is empty, but this node was used before" in message
    assert {"marker": "store-earlier", "kek file": "holds 1 KEK",
            "pool volume": "cv-a"}[sign] in message
    assert "\n" not in message and "--adopt" in message


def test_a_swapped_store_is_refused_naming_both(node: Node) -> None:
    first = node.start(node.store())
    other = node.store("other.db")
    second = identity.create_identity(other.store)
    with pytest.raises(StartRefused) as info:
        node.start(other)
    assert first.id in str(info.value) and second.id in str(info.value)


def test_a_store_that_lost_records_is_refused(node: Node) -> None:
    volumes = node.store()
    node.start(volumes)
    node.create_volume(volumes, "cv-a")
    volumes.remove(volumes.require("cv-a"))  # as a lost WAL would
    with pytest.raises(StartRefused) as info:
        node.start(volumes)
    assert "has no record of 1 volume(s) in pool default (cv-a)" in str(info.value)


def test_adopt_accepts_the_store_once_and_remembers_what_it_accepted(node: Node) -> None:
    volumes = node.store()
    first = node.start(volumes)
    node.create_volume(volumes, "cv-a")
    emptied = node.store("emptied.db")
    adopted = node.start(emptied, adopt=True)
    assert adopted != first
    assert identity.read_marker(node.state_dir) == adopted.id
    assert node.pools.default.provisioner.store_marker() == adopted.id
    assert identity.adopted_orphans(emptied.store) == {"cv-a"}
    assert node.start(emptied) == adopted  # no --adopt needed again


def test_a_store_from_before_identities_gets_one_without_a_question(node: Node) -> None:
    volumes = node.store()
    node.create_volume(volumes, "cv-a")
    made = node.start(volumes)
    assert identity.read_identity(volumes.store) == made


def test_a_state_dir_readable_by_others_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "state"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    prepare_state_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    prepare_state_dir(tmp_path / "new" / "state")
    assert stat.S_IMODE((tmp_path / "new" / "state").stat().st_mode) == 0o700


def test_the_database_and_its_wal_are_private(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    try:
        identity.create_identity(store)
        for name in ("db", "db-wal", "db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        store.close()
    (tmp_path / "db").chmod(0o644)
    SqliteStore(tmp_path / "db").close()
    assert stat.S_IMODE((tmp_path / "db").stat().st_mode) == 0o600
