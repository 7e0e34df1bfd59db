"""What a copy may be: at least its source's size, its source's header and filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.engine import copies
from cryptvol.engine.parameters import parse_parameters, parse_snapshot_parameters
from cryptvol.engine.sizes import MIB, copy_capacity
from cryptvol.errors import FailedPrecondition, InvalidArgument, OutOfRange
from cryptvol.keys.manager import open_local
from cryptvol.pools.base import CopySource
from cryptvol.state.records import ContentSource, LuksRecord, VolumeRecord

ORIGIN = copies.Origin(
    source=ContentSource(kind="snapshot", id="cs-1"),
    bytes_from=CopySource("cv-1", "cs-1"),
    key_id="cs-1",
    pool="default",
    size_bytes=64 * MIB,
    fs_type="ext4",
    key_source="managed",
    secret_key="passphrase",
    luks=LuksRecord(format={"cipher": "aes-xts-plain64", "key_size": 512,
                            "sector_size": None}, open={}, reasons=[]),
)


def test_a_copy_is_its_source_size_unless_asked_for_more() -> None:
    assert copy_capacity(0, 0, 64 * MIB, "snapshot s") == 64 * MIB
    assert copy_capacity(100 * MIB + 1, 0, 64 * MIB, "snapshot s") == 101 * MIB
    with pytest.raises(OutOfRange, match="at least 67108864"):
        copy_capacity(32 * MIB, 0, 64 * MIB, "snapshot s")
    with pytest.raises(OutOfRange, match="snapshot s holds"):
        copy_capacity(0, 32 * MIB, 64 * MIB, "snapshot s")


@pytest.mark.parametrize(("params", "fs", "words"), [
    ({"keySource": "secret"}, None, "keySource: managed"),
    ({"cipher": "aes-cbc-essiv:sha256"}, None, "cipher aes-xts-plain64"),
    ({"keySize": "256"}, None, "keySize 512"),
    ({"sectorSize": "4096"}, None, "sectorSize None"),
    ({}, "xfs", "holds ext4"),
])
def test_a_copy_cannot_ask_for_what_its_source_header_fixes(
        params: dict[str, str], fs: str | None, words: str) -> None:
    parsed = parse_parameters(params)
    with pytest.raises(InvalidArgument, match=words):
        copies.check_compatible(ORIGIN, parsed.key_source, parsed.secret_key, parsed.raw, fs)


def test_a_copy_may_repeat_what_its_source_has_and_choose_how_it_opens() -> None:
    parsed = parse_parameters({"keySize": "512", "allowDiscards": "true",
                               "cloneReencrypt": "true"})
    copies.check_compatible(ORIGIN, parsed.key_source, parsed.secret_key, parsed.raw, "ext4")
    assert parsed.clone_reencrypt


def test_snapshot_classes_take_only_the_snapshotter_metadata() -> None:
    parse_snapshot_parameters({"csi.storage.k8s.io/volumesnapshot/name": "s"})
    with pytest.raises(InvalidArgument, match="'pool'"):
        parse_snapshot_parameters({"pool": "fast"})


def _volume(**changes: object) -> VolumeRecord:
    return VolumeRecord(id="cv-1", name="pvc-1", capacity_bytes=MIB, backing_bytes=17 * MIB,
                        parameters={}, fs_type="ext4", key_source="managed", node_id="n",
                        luks=ORIGIN.luks).model_copy(update=changes)


def test_a_volume_is_copied_only_once_its_own_keys_are_settled(tmp_path: Path) -> None:
    store, keys = open_local(tmp_path)
    keys.create_dek("cv-1")
    copies.check_settled(_volume(), keys)
    # A copy not yet reencrypted is still its source's ciphertext: it copies like one.
    copies.check_settled(_volume(reencrypt="pending"), keys)
    with pytest.raises(FailedPrecondition, match="being reencrypted"):
        copies.check_settled(_volume(reencrypt="pending", reencrypt_from="digest"), keys)
    keys.next_dek("cv-1")
    with pytest.raises(FailedPrecondition, match="replacing its data key"):
        copies.check_settled(_volume(), keys)
    store.close()
