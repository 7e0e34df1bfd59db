"""The store never silently forgets: a driver refuses to start over a state store that lost
its content or is another's, says in one line what to do, and changes nothing; `--adopt`
is the deliberate way past it; `cryptvol state check` lists orphans both ways."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver

MIB = 1024 * 1024


def create(csi, name):
    return csi.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability("ext4")],
        capacity_range=pb.CapacityRange(required_bytes=32 * MIB))).volume


def files(driver):
    """What the refused start must not change: the KEK file, markers and the pool."""
    found = {}
    for folder in (driver.state_dir, driver.pool_dir):
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("cryptvol.db") or entry.name.startswith(".kek"):
                continue
            found[str(entry)] = entry.read_bytes() if entry.stat().st_size < MIB else \
                entry.stat().st_size
    return found


def refused(driver, *more):
    before = files(driver)
    result = driver.start_refused(*more)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert files(driver) == before  # no new KEK, no new marker, no file touched
    return lines[0]


@pytest.fixture
def used(tmp_path):
    """A driver that made a volume, then stopped: a node with an earlier life. Its state dir
    was made readable by others (`mkdir -m755`) before its first start."""
    running = RunningDriver(tmp_path)
    running.state_dir.mkdir(mode=0o755)
    running.state_dir.chmod(0o755)
    csi = running.start()
    volume = create(csi, "precious")
    running.stop()
    return running, volume.volume_id


@pytest.mark.parametrize("loss", ["truncated", "deleted"])
def test_an_emptied_store_is_refused_and_nothing_changes(used, loss):
    driver, volume_id = used
    db = driver.state_dir / "cryptvol.db"
    if loss == "truncated":
        os.truncate(db, 0)
    else:
        for name in ("cryptvol.db", "cryptvol.db-wal", "cryptvol.db-shm"):
            (driver.state_dir / name).unlink(missing_ok=True)
    line = refused(driver)
    assert "is empty, but this node was used before" in line
    assert "holds 1 KEK(s)" in line and volume_id in line
    assert "--adopt" in line and "backup" in line


def test_an_unreadable_store_is_refused(used):
    driver, _ = used
    db = driver.state_dir / "cryptvol.db"
    db.write_bytes(os.urandom(8192))
    line = refused(driver)
    assert "file is not a database" in line and "Restore it from a backup" in line


def test_a_store_whose_wal_was_lost_after_a_crash_is_refused(tmp_path):
    driver = RunningDriver(tmp_path)
    csi = driver.start()
    create(csi, "precious")
    driver.kill()
    wal = driver.state_dir / "cryptvol.db-wal"
    assert wal.stat().st_size > 0
    wal.write_bytes(os.urandom(wal.stat().st_size))
    assert "refusing to start" in refused(driver)


def test_another_nodes_store_is_refused(used, tmp_path):
    driver, _ = used
    other = RunningDriver(tmp_path / "other")
    other.work.mkdir()
    other.start()
    other.stop()
    for name in ("cryptvol.db", "cryptvol.db-wal", "cryptvol.db-shm"):
        (driver.state_dir / name).unlink(missing_ok=True)
        if (other.state_dir / name).exists():
            (driver.state_dir / name).write_bytes((other.state_dir / name).read_bytes())
    line = refused(driver)
    assert "a swapped store, or one restored from elsewhere" in line


def test_adopt_starts_over_an_emptied_store_and_names_the_unreadable_volumes(used):
    driver, volume_id = used
    os.truncate(driver.state_dir / "cryptvol.db", 0)
    driver.start("", "--adopt")
    adopted = [json.loads(line) for line in driver.log_lines() if "--adopt" in line]
    assert volume_id in adopted[-1]["unreadable"]
    # Adopted once: later starts need no flag, and the orphan stays listed.
    driver.restart()
    driver.stop()
    check = state_check(driver)
    assert check.returncode == 1
    assert f"default {volume_id} (accepted by --adopt)" in check.stdout


def state_check(driver):
    return subprocess.run(
        [sys.executable, "-m", "cryptvol", "state", "check", "--state-dir",
         str(driver.state_dir), "--pool-dir", str(driver.pool_dir), "--node-id",
         driver.node_id, "--json"],
        capture_output=True, text=True, timeout=60)


def test_state_check_lists_orphans_both_ways(tmp_path):
    driver = RunningDriver(tmp_path)
    csi = driver.start()
    fine, unbacked, keyless, unrecorded = (create(csi, n).volume_id
                                           for n in ("fine", "unbacked", "keyless", "lost"))
    driver.stop()
    assert state_check(driver).returncode == 0
    (driver.pool_dir / f"{unbacked}.img").unlink()
    from cryptvol.keys.keyset import dek_key
    from cryptvol.state.layout import VOLUMES
    from cryptvol.store.base import Delete
    from cryptvol.store.sqlite import SqliteStore

    store = SqliteStore(driver.state_dir / "cryptvol.db")
    try:
        store.txn([], [Delete(dek_key(keyless)), Delete(VOLUMES.record_key(unrecorded))])
    finally:
        store.close()
    check = state_check(driver)
    assert check.returncode == 1
    found = json.loads(check.stdout)
    assert found["pool volumes without a record"] == [f"default {unrecorded}"]
    assert [r.split()[0] for r in found["records without a backing volume"]] == [unbacked]
    assert [r.split()[0] for r in found["records without a data key"]] == [keyless]
    assert found["data keys without a record"] == [unrecorded]
    assert fine not in check.stdout
    # The driver itself refuses this store: it lost a record.
    assert f"has no record of 1 volume(s) in pool default ({unrecorded})" in refused(driver)


def test_the_state_is_private_and_a_driver_with_its_own_store_starts_again(used):
    driver, volume_id = used
    assert stat.S_IMODE(driver.state_dir.stat().st_mode) == 0o700
    for name in ("cryptvol.db", "cryptvol.db-wal", "cryptvol.db-shm", "kek.json", "store-id"):
        path = driver.state_dir / name
        assert not path.exists() or stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert stat.S_IMODE((driver.state_dir / "cryptvol.db").stat().st_mode) == 0o600
    csi = driver.start()
    for name in ("cryptvol.db-wal", "cryptvol.db-shm"):
        assert stat.S_IMODE((driver.state_dir / name).stat().st_mode) == 0o600, name
    assert csi.controller.ControllerGetVolume(
        pb.ControllerGetVolumeRequest(volume_id=volume_id)).volume.volume_id == volume_id
    with pytest.raises(grpc.RpcError):
        csi.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id="cv-x"))
    driver.stop()
