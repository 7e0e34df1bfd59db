"""A pool promises at most its size times the over-commit ratio."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.engine.capacity import CapacityLedger
from cryptvol.errors import ResourceExhausted
from cryptvol.pools.loop import open_pool
from cryptvol.state.records import LuksRecord, VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.store.sqlite import SqliteStore


@pytest.fixture
def volumes(tmp_path: Path):
    store = SqliteStore(tmp_path / "db")
    yield VolumeRepository(store)
    store.close()


def _record(volume_id: str, backing: int, pool: str = "default", node: str = "n"
            ) -> VolumeRecord:
    return VolumeRecord(id=volume_id, name=volume_id, capacity_bytes=backing,
                        backing_bytes=backing, parameters={}, fs_type="ext4",
                        key_source="managed", node_id=node, pool=pool,
                        luks=LuksRecord(format={}, open={}, reasons=[]))


@pytest.mark.parametrize("ratio", [1.0, 2.5])
def test_promises_stop_at_the_pool_size_times_the_ratio(volumes, tmp_path, ratio) -> None:
    pool = open_pool("default", str(tmp_path / "pool"))
    ledger = CapacityLedger(volumes, "n", overcommit=ratio)
    # The pool's filesystem is shared with other tests: its free space moves a little.
    size = pool.provisioner.space().total_bytes
    assert abs(ledger.available(pool) - size * ratio) < size * ratio / 100
    part = int(size * ratio * 0.4)
    for name in ("a", "b"):
        with ledger.promise(pool, part, "a volume"):
            volumes.insert(_record(name, part))
    # Another node's volumes and another pool's do not count here.
    volumes.insert(_record("elsewhere", size, node="m"))
    volumes.insert(_record("other-pool", size, pool="other"))
    assert ledger.promised(pool) == 2 * part
    with pytest.raises(ResourceExhausted) as info, ledger.promise(pool, part, "one more"):
        pass
    assert f"over-commit ratio {ratio:g}" in str(info.value)
