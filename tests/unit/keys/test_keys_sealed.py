"""Sealing for the KMS plugin on the embedded store: AES-256-GCM under the current KEK, key id
and annotations bound, retired and unknown keys refused, Encrypt only on a confirmed key set;
each KEK's last use recorded and honoured by retirement."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cryptvol.keys.config import KeysConfig, open_keys
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.replica import Replica
from cryptvol.keys.rotation import Rotation
from cryptvol.keys.sealed import FORMAT_ANNOTATION, MAX_CIPHERTEXT, MAX_PLAINTEXT, Sealer
from cryptvol.keys.status import read_status
from cryptvol.keys.usage import KekUsage, read_usage, recently_used
from cryptvol.store.sqlite import SqliteStore
from cryptvol.system.secret import Secret


@pytest.fixture
def sealer(tmp_path: Path):
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    replica = Replica(km, "kms-1", role="kms", count_interval=0)
    usage = KekUsage(store, "kms-1", resolution=0)
    replica.tasks = (usage.flush,)
    replica.tick()
    yield Sealer(replica, usage)
    store.close()


def test_a_round_trip_returns_the_plaintext_under_the_current_key(sealer: Sealer) -> None:
    sealed = sealer.encrypt(Secret(b"k" * 32))
    assert sealed.key_id == sealer.manager.loaded.current_id
    assert sealed.annotations == {FORMAT_ANNOTATION: b"1"}
    assert len(sealed.ciphertext) == 32 + 28 and b"k" * 32 not in sealed.ciphertext
    again = sealer.encrypt(Secret(b"k" * 32))
    assert again.ciphertext != sealed.ciphertext  # a fresh nonce every time
    assert sealer.decrypt(sealed.ciphertext, sealed.key_id, sealed.annotations).reveal() == (
        b"k" * 32
    )


def test_the_largest_plaintext_fits_the_apiservers_ciphertext_limit(sealer: Sealer) -> None:
    assert len(sealer.encrypt(Secret(b"x" * MAX_PLAINTEXT)).ciphertext) == MAX_CIPHERTEXT
    for size in (0, MAX_PLAINTEXT + 1, 4096):
        with pytest.raises(InvalidArgument, match=f"is {size} bytes"):
            sealer.encrypt(Secret(b"x" * size))


def test_tampering_another_key_id_or_other_annotations_do_not_open(sealer: Sealer) -> None:
    sealed = sealer.encrypt(Secret(b"p" * 32))
    tampered = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(InvalidArgument, match="altered, or the key_id or the annotations"):
        sealer.decrypt(tampered, sealed.key_id, sealed.annotations)
    extra = {**sealed.annotations, "other.example.com": b"x"}
    with pytest.raises(InvalidArgument, match="altered, or the key_id or the annotations"):
        sealer.decrypt(sealed.ciphertext, sealed.key_id, extra)
    with pytest.raises(InvalidArgument, match=f"{FORMAT_ANNOTATION} is missing"):
        sealer.decrypt(sealed.ciphertext, sealed.key_id, {})
    with pytest.raises(InvalidArgument, match="does not know"):
        sealer.decrypt(sealed.ciphertext, sealed.key_id, {FORMAT_ANNOTATION: b"9"})
    with pytest.raises(InvalidArgument, match="too short"):
        sealer.decrypt(sealed.ciphertext[:20], sealed.key_id, sealed.annotations)
    with pytest.raises(NotFound, match="kek-unknown is not a key"):
        sealer.decrypt(sealed.ciphertext, "kek-unknown", sealed.annotations)


def test_a_ciphertext_given_back_with_another_live_key_id_does_not_open(
    sealer: Sealer, tmp_path: Path
) -> None:
    sealed = sealer.encrypt(Secret(b"p" * 32))
    prepared = Rotation(sealer.manager.store, LocalKekProvider(tmp_path)).prepare(wait=0)
    sealer.replica.tick()
    with pytest.raises(InvalidArgument, match=f"does not decrypt with key {prepared.id}"):
        sealer.decrypt(sealed.ciphertext, prepared.id, sealed.annotations)


def test_rotation_changes_the_key_id_at_rotate_and_retirement_refuses_old_ciphertexts(
    sealer: Sealer, tmp_path: Path
) -> None:
    rotation = Rotation(sealer.manager.store, LocalKekProvider(tmp_path))
    # The replica runs its loop, as in a plugin: transitions wait for its report.
    sealer.replica.interval = 0.05
    sealer.replica.start()

    def settle() -> None:
        time.sleep(0.3)

    before = sealer.encrypt(Secret(b"a" * 32))
    rotation.prepare(wait=5)
    settle()
    during = sealer.encrypt(Secret(b"b" * 32))
    assert during.key_id == before.key_id  # prepare changes nothing for Encrypt
    rotation.rotate(wait=5)
    settle()
    after = sealer.encrypt(Secret(b"c" * 32))
    assert after.key_id != before.key_id
    for sealed, text in ((before, b"a"), (during, b"b"), (after, b"c")):
        assert sealer.decrypt(sealed.ciphertext, sealed.key_id, sealed.annotations).reveal() == (
            text * 32
        )
    settle()  # the loop flushes the last use of the old KEK
    with pytest.raises(FailedPrecondition) as refused:
        rotation.reencrypt(wait=5)
    message = str(refused.value)
    assert f"KEK {before.key_id} was used by KMS plugin kms-1" in message
    assert "kubectl get secrets -A -o json | kubectl replace -f -" in message
    assert rotation.read()[0].stage == "reencrypt_active"  # nothing retired
    rotation.reencrypt(wait=5, retire_grace=0)
    assert rotation.read()[0].is_retired(before.key_id)
    settle()
    with pytest.raises(FailedPrecondition, match=f"key {before.key_id} is retired"):
        sealer.decrypt(before.ciphertext, before.key_id, before.annotations)
    assert sealer.decrypt(after.ciphertext, after.key_id, after.annotations).reveal() == b"c" * 32
    sealer.replica.stop()


def test_encrypt_waits_for_a_confirmed_key_set_but_decrypt_does_not(sealer: Sealer) -> None:
    sealed = sealer.encrypt(Secret(b"k" * 32))
    sealer.replica._confirmed = time.monotonic() - sealer.replica.ttl - 1  # lease lapsed
    with pytest.raises(Unavailable, match="longer than the 10s report lease"):
        sealer.encrypt(Secret(b"k" * 32))
    assert not sealer.health().ok and "report lease" in sealer.health().reason
    assert sealer.decrypt(sealed.ciphertext, sealed.key_id, sealed.annotations)
    sealer.replica.tick()
    assert sealer.health().ok and sealer.encrypt(Secret(b"k" * 32))


def test_a_replica_that_cannot_load_is_not_healthy_and_encrypts_nothing(tmp_path: Path) -> None:
    store, km = open_keys(KeysConfig(state_dir=tmp_path))
    store.close()
    (tmp_path / "kek.json").write_text("{damaged")
    store, km = open_keys(KeysConfig(state_dir=tmp_path), lazy=True)
    replica = Replica(km, "kms-1", role="kms", count_interval=0)
    replica.tick()
    sealer = Sealer(replica, KekUsage(store, "kms-1"))
    health = sealer.health()
    assert not health.ok and "kek" in health.reason.lower() and health.key_id == ""
    with pytest.raises(Unavailable, match="not ready"):
        sealer.encrypt(Secret(b"k" * 32))
    store.close()


def test_last_use_is_kept_per_replica_and_the_latest_wins(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    a, b = KekUsage(store, "kms-a", resolution=60), KekUsage(store, "kms-b", resolution=60)
    a.note("kek-1")
    assert a.flush() and not a.flush()  # within the resolution: nothing new to write
    time.sleep(0.01)
    b.note("kek-1")
    b.note("kek-2")
    assert b.flush()
    usage = read_usage(store)
    assert usage["kek-1"].replica == "kms-b" and usage["kek-2"].replica == "kms-b"
    assert [u.kek_id for u in recently_used(store, ["kek-1", "kek-3"], grace=60)] == ["kek-1"]
    assert recently_used(store, ["kek-1"], grace=60, now=time.time() + 120) == []
    # A restarted replica starts with nothing in memory and keeps what it wrote before.
    KekUsage(store, "kms-b", resolution=60).flush(force=True)
    assert set(read_usage(store)) == {"kek-1", "kek-2"}
    store.close()


def test_keys_status_shows_the_last_kms_use_of_each_kek(sealer: Sealer) -> None:
    sealer.encrypt(Secret(b"k" * 32))
    sealer.replica.tick()
    doc = read_status(sealer.manager.store).to_json()
    (kek,) = doc["keks"]  # type: ignore[misc]
    assert kek["kms_last_used_by"] == "kms-1" and time.time() - kek["kms_last_used"] < 60
