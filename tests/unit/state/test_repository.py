"""Records live under their layout's keys, change only by compare-and-swap, and keep their
name index in step with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.errors import NotFound
from cryptvol.state.layout import VOLUMES
from cryptvol.state.records import LuksRecord, VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.store.sqlite import SqliteStore


def _record(volume_id: str, name: str) -> VolumeRecord:
    return VolumeRecord(
        id=volume_id, name=name, capacity_bytes=1, backing_bytes=2, parameters={},
        fs_type="ext4", key_source="managed", node_id="n",
        luks=LuksRecord(format={}, open={}, reasons=[]),
    )


@pytest.fixture
def volumes(tmp_path: Path) -> VolumeRepository:
    return VolumeRepository(SqliteStore(tmp_path / "state.db"))


def test_a_name_maps_to_one_record(volumes: VolumeRepository) -> None:
    assert volumes.insert(_record("cv-1", "pvc-a"))
    assert not volumes.insert(_record("cv-2", "pvc-a"))
    assert not volumes.insert(_record("cv-1", "pvc-b"))
    assert volumes.id_for_name("pvc-a") == "cv-1"
    assert volumes.store.get(VOLUMES.record_key("cv-1")) is not None


def test_update_changes_the_stored_record(volumes: VolumeRepository) -> None:
    volumes.insert(_record("cv-1", "pvc-a"))
    volumes.update("cv-1", lambda r: r.model_copy(update={"state": "ready"}))
    assert volumes.require("cv-1").state == "ready"
    with pytest.raises(NotFound):
        volumes.update("cv-9", lambda r: r)


def test_remove_drops_the_record_and_its_name(volumes: VolumeRepository) -> None:
    record = _record("cv-1", "pvc-a")
    volumes.insert(record)
    volumes.remove(record)
    assert volumes.get("cv-1") is None
    assert volumes.id_for_name("pvc-a") is None


@pytest.mark.parametrize("owns_name", [False, True])
def test_remove_leaves_a_name_another_record_holds(volumes: VolumeRepository,
                                                   owns_name: bool) -> None:
    volumes.insert(_record("cv-1", "pvc-a"))
    stray = _record("cv-2", "pvc-a")  # never inserted: the name is cv-1's
    volumes.remove(stray, owns_name=owns_name)
    # Read first, the name stays; a caller that says the record owns it is believed.
    assert volumes.id_for_name("pvc-a") == (None if owns_name else "cv-1")


def test_an_update_from_a_stale_copy_retries_from_the_store(volumes: VolumeRepository) -> None:
    revision = volumes.insert(_record("cv-1", "pvc-a"))
    assert revision
    stale = volumes.get_with_revision("cv-1")
    volumes.update("cv-1", lambda r: r.model_copy(update={"capacity_bytes": 2}))
    assert stale is not None and stale[1] == revision
    updated = volumes.update("cv-1", lambda r: r.model_copy(update={"state": "ready"}),
                             current=stale)
    # The compare-and-swap on the stale copy lost; the retry read the record as stored.
    assert updated.capacity_bytes == 2 and volumes.require("cv-1").capacity_bytes == 2


def test_pages_follow_id_order(volumes: VolumeRepository) -> None:
    for i in range(5):
        volumes.insert(_record(f"cv-{i}", f"pvc-{i}"))
    assert [r.id for r in volumes.page("", 2)] == ["cv-0", "cv-1"]
    assert [r.id for r in volumes.page("cv-1", 2)] == ["cv-2", "cv-3"]
    assert len(volumes.all()) == 5


def test_records_from_before_pools_name_the_default_pool() -> None:
    old = _record("cv-1", "pvc-a").model_dump()
    del old["pool"]
    old["backend"] = "loop"
    assert VolumeRecord.model_validate(old).pool == "default"


def test_filtered_pages_are_full_and_their_token_survives_deletes(
        volumes: VolumeRepository) -> None:
    for i in range(10):
        volumes.insert(_record(f"cv-{i}", f"pvc-{i}"))
    even = [f"cv-{i}" for i in range(0, 10, 2)]

    def keep(r: VolumeRecord) -> bool:
        return int(r.id[3:]) % 2 == 0

    page, token = volumes.page_where("", 2, keep)
    assert [r.id for r in page] == even[:2] and token == even[1]
    volumes.remove(volumes.require(even[1]))
    page, token = volumes.page_where(token, 2, keep)
    assert [r.id for r in page] == even[2:4]
    page, token = volumes.page_where(token, 2, keep)
    assert [r.id for r in page] == even[4:] and token == ""
    assert [r.id for r in volumes.page_where("", 0, keep)[0]] == [i for i in even
                                                                   if i != even[1]]
