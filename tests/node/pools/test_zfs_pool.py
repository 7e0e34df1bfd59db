"""The ZFS pool on real ZFS (in the VM): sparse zvols and their devices without udev,
snapshots, copies (a clone inside one encryption root, a raw send across roots), volumes
deleted while their copies live, and native encryption: a key not loaded, and the seed's
`zfs recv -F` failure next to the pool's own copy succeeding."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from cryptvol.cli.doctor import pool_checks
from cryptvol.errors import FailedPrecondition, NotFound
from cryptvol.pools import zvol_devices
from cryptvol.pools.base import CopySource, Pool, WriteState
from cryptvol.pools.registry import parse_pool_spec
from cryptvol.pools.zfs import STORE_PROPERTY, open_pool
from cryptvol.pools.zvol_devices import ZvolDevices
from cryptvol.system import CommandError, run_pipeline
from cryptvol.system.devices import device_size
from support.zfs import ZfsTestPool, datasets_under, zfs, zfs_get

MIB = 1024 * 1024
SEED_FAILURE = (
    "zfs receive -F cannot be used to destroy an encrypted filesystem or overwrite an "
    "unencrypted one with an encrypted one"
)


@pytest.fixture(scope="module")
def plain(zfs_pool: ZfsTestPool) -> Pool:
    return open_pool("z", zfs_pool.plain)


@pytest.fixture(scope="module")
def encrypted(zfs_pool: ZfsTestPool) -> Pool:
    return open_pool("ze", zfs_pool.encrypted)


@pytest.fixture
def audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "exec-audit.jsonl"
    monkeypatch.setenv("CRYPTVOL_EXEC_AUDIT", str(path))
    return path


def commands(audit: Path) -> list[list[str]]:
    if not audit.exists():
        return []
    return [json.loads(line)["argv"] for line in audit.read_text().splitlines()]


def new_id(label: str) -> str:
    return f"cv-{label}-{uuid.uuid4().hex[:8]}"


def write(pool: Pool, volume_id: str, data: bytes) -> None:
    with open(pool.node.attach(volume_id), "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read(pool: Pool, volume_id: str, size: int) -> bytes:
    with open(pool.node.attach(volume_id), "rb") as f:
        return f.read(size)


def test_a_zvol_is_made_sparse_attached_without_udev_grown_and_destroyed(
    plain: Pool, zfs_pool: ZfsTestPool
) -> None:
    vid = new_id("life")
    name = f"{zfs_pool.plain}/{vid}"
    plain.provisioner.create(vid, 64 * MIB)
    plain.provisioner.create(vid, 64 * MIB)  # a retry is a no-op
    with pytest.raises(FailedPrecondition, match="not the"):
        plain.provisioner.create(vid, 32 * MIB)
    assert zfs_get(name, "volmode") == "dev"
    assert zfs_get(name, "refreservation") == "0"  # sparse: nothing reserved
    assert plain.provisioner.size(vid) == 64 * MIB

    # The guest has no udev, so no /dev/zvol links: the device is found by its name.
    assert not Path("/dev/zvol").exists()
    device = plain.node.attach(vid)
    assert device.startswith("/dev/zd")
    assert plain.node.attach(vid) == device
    assert plain.node.attached_device(vid) == device
    assert device_size(device) == 64 * MIB

    assert not plain.provisioner.in_use(vid)
    held = os.open(device, os.O_RDONLY | os.O_EXCL)
    try:
        assert plain.provisioner.in_use(vid)
    finally:
        os.close(held)
    assert not plain.provisioner.in_use(vid)

    assert plain.provisioner.expand(vid, 96 * MIB) == 96 * MIB
    assert plain.provisioner.expand(vid, 80 * MIB) == 96 * MIB  # never shrinks
    assert plain.node.refresh(vid) == 96 * MIB

    plain.node.detach(vid)
    plain.provisioner.delete(vid)
    plain.provisioner.delete(vid)
    assert plain.provisioner.size(vid) is None
    assert plain.node.attached_device(vid) is None
    with pytest.raises(NotFound):
        plain.node.attach(vid)


def test_the_pool_knows_a_zvol_nothing_was_written_to(plain: Pool) -> None:
    """What lets the engine format a new volume without reading it all first."""
    a, b = new_id("blank"), new_id("blank-copy")
    plain.provisioner.create(a, 32 * MIB)
    assert plain.node.written(a) is WriteState.NEVER
    plain.provisioner.expand(a, 48 * MIB)
    assert plain.node.written(a) is WriteState.NEVER
    plain.provisioner.copy(CopySource(a), b, 48 * MIB)
    assert plain.node.written(b) is WriteState.WRITTEN  # a copy holds its source's bytes
    with open(plain.node.attach(a), "r+b") as f:
        f.seek(40 * MIB)
        f.write(b"x")  # one byte, no fsync: it may be only in the intent log yet
    assert plain.node.written(a) is WriteState.WRITTEN
    for vid in (b, a):
        plain.provisioner.delete(vid)


def test_the_pool_lists_its_volumes_and_keeps_the_store_identity(
    plain: Pool, zfs_pool: ZfsTestPool
) -> None:
    a, b = new_id("listed"), new_id("hidden")
    plain.provisioner.create(a, 16 * MIB)
    plain.provisioner.create(b, 16 * MIB)
    plain.provisioner.snapshot(b, "s")
    plain.provisioner.delete(b)  # hidden while its snapshot lives
    ids = plain.provisioner.volume_ids()
    assert a in ids and b not in ids and all(":" not in i for i in ids)
    try:
        assert plain.provisioner.store_marker() is None
        plain.provisioner.mark_store("store-1f2e")
        plain.provisioner.mark_store("store-1f2e")
        assert plain.provisioner.store_marker() == "store-1f2e"
        assert zfs_get(zfs_pool.plain, STORE_PROPERTY) == "store-1f2e"
    finally:
        zfs("inherit", STORE_PROPERTY, zfs_pool.plain)
    plain.provisioner.delete_snapshot(b, "s")
    plain.provisioner.delete(a)
    assert not [n for n in datasets_under(zfs_pool.plain) if a in n or b in n]


def test_a_zvol_device_is_found_where_dev_has_no_node_for_it_asking_each_device_once(
    plain: Pool, zfs_pool: ZfsTestPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without devtmpfs nothing makes /dev/zdN: the pool makes the node from sysfs. And it
    opens another zvol's device only once: an open zvol cannot be destroyed."""
    a, b = new_id("nodes"), new_id("other")
    plain.provisioner.create(a, 16 * MIB)
    plain.provisioner.create(b, 16 * MIB)
    try:
        devices = ZvolDevices(dev_dir=tmp_path)
        found = devices.wait(f"{zfs_pool.plain}/{a}")
        assert Path(found).parent == tmp_path
        assert stat.S_ISBLK(os.stat(found).st_mode)
        assert os.stat(found).st_rdev == os.stat(plain.node.attach(a)).st_rdev

        other = devices.wait(f"{zfs_pool.plain}/{b}")
        asked: list[str] = []
        real = zvol_devices._zvol_name
        monkeypatch.setattr(zvol_devices, "_zvol_name",
                            lambda device: asked.append(device) or real(device))
        assert devices.find(f"{zfs_pool.plain}/{a}") == found
        assert other not in asked
    finally:
        for vid in (a, b):
            plain.provisioner.delete(vid)


def test_a_snapshot_and_each_copy_hold_the_bytes_of_their_moment(
    plain: Pool, zfs_pool: ZfsTestPool
) -> None:
    a, b, c = new_id("src"), new_id("from-snap"), new_id("from-vol")
    plain.provisioner.create(a, 64 * MIB)
    write(plain, a, b"BEFORE-SNAPSHOT")
    assert plain.provisioner.snapshot(a, "s1") == 64 * MIB
    assert plain.provisioner.snapshot(a, "s1") == 64 * MIB
    write(plain, a, b"AFTER--SNAPSHOT")

    plain.provisioner.copy(CopySource(a, "s1"), b, 96 * MIB)
    plain.provisioner.copy(CopySource(a, "s1"), b, 96 * MIB)
    assert read(plain, b, 15) == b"BEFORE-SNAPSHOT"
    assert plain.provisioner.size(b) == 96 * MIB
    # A clone: constant time, blocks shared with the snapshot.
    assert zfs_get(f"{zfs_pool.plain}/{b}", "origin") == f"{zfs_pool.plain}/{a}@s1"

    plain.provisioner.copy(CopySource(a), c, 64 * MIB)
    assert read(plain, c, 15) == b"AFTER--SNAPSHOT"
    point = zfs_get(f"{zfs_pool.plain}/{c}", "origin")
    assert zfs_get(point, "defer_destroy") == "on"  # goes with the copy

    with pytest.raises(NotFound):
        plain.provisioner.copy(CopySource(a, "nope"), new_id("x"), 64 * MIB)
    with pytest.raises(NotFound):
        plain.provisioner.copy(CopySource(new_id("absent")), new_id("x"), 64 * MIB)

    for vid in (b, c):
        plain.provisioner.delete(vid)
    plain.provisioner.delete_snapshot(a, "s1")
    plain.provisioner.delete(a)
    assert not [n for n in datasets_under(zfs_pool.plain) if a in n]


def test_a_deleted_volume_keeps_its_storage_until_its_last_dependent_goes(
    plain: Pool, zfs_pool: ZfsTestPool
) -> None:
    a, b, c = new_id("origin"), new_id("clone-1"), new_id("clone-2")
    plain.provisioner.create(a, 32 * MIB)
    write(plain, a, b"ORIGINAL-DATA")
    plain.provisioner.snapshot(a, "keep")
    plain.provisioner.copy(CopySource(a, "keep"), b, 32 * MIB)

    plain.provisioner.delete(a)
    assert plain.provisioner.size(a) is None  # gone from the API at once
    hidden = [n for n in datasets_under(zfs_pool.plain) if ":deleted:" in n and a in n]
    assert hidden, "its storage stays while the snapshot and clone live"
    assert zfs_get(hidden[0].split("@")[0], "volmode") == "none"

    # The id is free again: a new volume of that name is a new, blank zvol.
    plain.provisioner.create(a, 32 * MIB)
    assert read(plain, a, 13) == bytes(13)
    plain.provisioner.delete(a)

    # A snapshot of a deleted volume still restores.
    plain.provisioner.copy(CopySource(a, "keep"), c, 32 * MIB)
    assert read(plain, c, 13) == b"ORIGINAL-DATA"

    plain.provisioner.delete_snapshot(a, "keep")  # deferred: two clones depend on it
    plain.provisioner.delete(b)
    assert [n for n in datasets_under(zfs_pool.plain) if a in n and "@keep" in n]
    assert read(plain, c, 13) == b"ORIGINAL-DATA"
    plain.provisioner.delete(c)
    assert not [n for n in datasets_under(zfs_pool.plain) if a in n or b in n or c in n]


def test_the_seeds_recv_force_onto_an_encrypted_dataset_fails_where_the_pool_copy_works(
    encrypted: Pool, zfs_pool: ZfsTestPool, audit: Path
) -> None:
    """The Incus + LINSTOR failure, reproduced with the real zfs: a full stream received with
    -F over an existing encrypted dataset is refused. The pool's own copy of the same
    snapshot succeeds (a clone inside the dataset's encryption root), and never runs
    `zfs recv -F`."""
    src, target, copy = new_id("seed-src"), new_id("seed-target"), new_id("seed-copy")
    encrypted.provisioner.create(src, 32 * MIB)
    write(encrypted, src, b"IMAGE-CONTENTS")
    encrypted.provisioner.snapshot(src, "image")
    encrypted.provisioner.create(target, 32 * MIB)  # the volume made first, as LINSTOR does

    with pytest.raises(CommandError) as info:
        run_pipeline(["zfs", "send", f"{zfs_pool.encrypted}/{src}@image"],
                     ["zfs", "recv", "-F", f"{zfs_pool.encrypted}/{target}"])
    assert "cannot receive new filesystem stream" in str(info.value)
    assert SEED_FAILURE in str(info.value)
    assert read(encrypted, target, 14) == bytes(14)  # the target was left alone

    audit.unlink(missing_ok=True)
    encrypted.provisioner.copy(CopySource(src, "image"), copy, 32 * MIB)
    assert read(encrypted, copy, 14) == b"IMAGE-CONTENTS"
    ran = commands(audit)
    assert ["zfs", "clone", "-o", "volmode=dev", f"{zfs_pool.encrypted}/{src}@image",
            f"{zfs_pool.encrypted}/{copy}"] in ran
    assert not [argv for argv in ran if "recv" in argv and "-F" in argv]
    # A clone under the pool's encryption root, sharing its key.
    assert zfs_get(f"{zfs_pool.encrypted}/{copy}", "encryptionroot") == zfs_pool.encrypted

    for vid in (copy, target):
        encrypted.provisioner.delete(vid)
    encrypted.provisioner.delete_snapshot(src, "image")
    encrypted.provisioner.delete(src)


def test_a_copy_across_encryption_roots_is_a_raw_send_that_joins_the_pools_root(
    encrypted: Pool, zfs_pool: ZfsTestPool, audit: Path
) -> None:
    """A volume an administrator re-keyed on its own (`zfs change-key` made it an encryption
    root) cannot be cloned into the pool's root: its copies are raw sends into a new name,
    then re-keyed to inherit the pool's key."""
    src, b, c = new_id("own-root"), new_id("raw-copy"), new_id("raw-live")
    name = f"{zfs_pool.encrypted}/{src}"
    encrypted.provisioner.create(src, 32 * MIB)
    write(encrypted, src, b"OWN-KEY-VOLUME")
    key = zfs_pool.new_key(src)
    zfs("change-key", "-o", "keyformat=raw", "-o", f"keylocation=file://{key}", name)
    assert zfs_get(name, "encryptionroot") == name
    encrypted.provisioner.snapshot(src, "s")

    audit.unlink(missing_ok=True)
    encrypted.provisioner.copy(CopySource(src, "s"), b, 48 * MIB)
    ran = commands(audit)
    assert ["zfs", "send", "-w", f"{name}@s"] in ran
    assert not [argv for argv in ran if "recv" in argv and "-F" in argv]
    copied = f"{zfs_pool.encrypted}/{b}"
    assert zfs_get(copied, "encryptionroot") == zfs_pool.encrypted
    assert zfs_get(copied, "origin") == "-"
    assert zfs_get(copied, "volmode") == "dev"
    assert not [n for n in datasets_under(copied)]  # no received snapshot left behind
    assert encrypted.provisioner.size(b) == 48 * MIB
    assert read(encrypted, b, 14) == b"OWN-KEY-VOLUME"

    encrypted.provisioner.copy(CopySource(src), c, 32 * MIB)
    assert read(encrypted, c, 14) == b"OWN-KEY-VOLUME"
    assert not [n for n in datasets_under(name) if "copy:" in n]  # its copy point went

    for vid in (b, c):
        encrypted.provisioner.delete(vid)
    encrypted.provisioner.delete_snapshot(src, "s")
    encrypted.provisioner.delete(src)


def test_a_pool_whose_key_is_not_loaded_says_to_run_zfs_load_key(
    zfs_pool: ZfsTestPool,
) -> None:
    root = zfs_pool.encryption_root(f"{zfs_pool.zpool}/locked-{uuid.uuid4().hex[:6]}",
                                    zfs_pool.new_key("locked"))
    try:
        pool = open_pool("locked", root)
        pool.provisioner.create(new_id("before"), 16 * MIB)
        zfs("unload-key", root)
        assert pool.encryption is not None
        state = pool.encryption()
        assert (state.cipher, state.root, state.key_loaded) == ("aes-256-gcm", root, False)
        for attempt in (lambda: pool.provisioner.create(new_id("v"), 16 * MIB),
                        pool.provisioner.space):
            with pytest.raises(FailedPrecondition, match=f"zfs load-key {root}"):
                attempt()
        (check,) = pool_checks([parse_pool_spec(f"locked=zfs:{root}")])
        assert check.verdict == "fail" and f"zfs load-key {root}" in check.advice
    finally:
        zfs("destroy", "-r", root)


def test_doctor_reports_each_zfs_pool_and_the_cost_of_encrypting_twice(
    zfs_pool: ZfsTestPool,
) -> None:
    found = {c.name: c for c in pool_checks([parse_pool_spec(zfs_pool.spec("z")),
                                             parse_pool_spec(zfs_pool.spec("ze", encrypted=True))])}
    assert found["pool z"].verdict == "ok"
    assert found["pool z"].value.startswith(f"zfs:{zfs_pool.plain}, ")
    assert (found["pool z encryption"].value, found["pool z encryption"].verdict) == (
        "none beneath LUKS2", "ok")
    twice = found["pool ze encryption"]
    assert twice.value == f"aes-256-gcm (root {zfs_pool.encrypted}, key loaded)"
    assert twice.verdict == "warn"
    assert "encrypts every block twice" in twice.advice
