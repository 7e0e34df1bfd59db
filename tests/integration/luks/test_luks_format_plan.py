"""What plan() decides is what the header gets, with this host's real cryptsetup."""

from __future__ import annotations

from pathlib import Path

from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import PBKDF2_MIN_ITERATIONS, parse_luks_parameters, plan
from cryptvol.luks.probe import probe_host
from cryptvol.system.secret import Secret

MANAGED_KEY = Secret(bytes(range(32)))
PASSPHRASE = Secret(b"correct horse battery staple")


def test_a_managed_key_gets_minimum_pbkdf2_and_unlocks_fast(header: Path) -> None:
    luks_plan = plan(parse_luks_parameters({}), "managed", probe_host())
    cryptsetup.format_device(str(header), MANAGED_KEY, luks_plan.format)
    kdf = cryptsetup.dump_metadata(str(header))["keyslots"]["0"]["kdf"]
    assert (kdf["type"], kdf["iterations"]) == ("pbkdf2", PBKDF2_MIN_ITERATIONS)
    assert cryptsetup.keyslot_memory_kib(str(header)) == 0
    # The benchmark measures the 50 ms target; here only a generous bound for loaded CI.
    assert cryptsetup.unlock_seconds(str(header), MANAGED_KEY) < 0.5


def test_a_passphrase_gets_argon2id_within_its_planned_memory(header: Path) -> None:
    params = parse_luks_parameters({"pbkdfMemory": "32768", "iterTime": "100"})
    luks_plan = plan(params, "passphrase", probe_host())
    cryptsetup.format_device(str(header), PASSPHRASE, luks_plan.format)
    kdf = cryptsetup.dump_metadata(str(header))["keyslots"]["0"]["kdf"]
    assert kdf["type"] == "argon2id"
    assert cryptsetup.keyslot_memory_kib(str(header)) <= 32768
    assert cryptsetup.keyslot_memory_kib(str(header)) < luks_plan.unlock_memory_kib
    assert cryptsetup.test_key(str(header), PASSPHRASE)
    assert not cryptsetup.test_key(str(header), Secret(b"wrong"))


def test_cipher_key_size_hash_and_sector_size_reach_the_header(header: Path) -> None:
    """(serpent and twofish need dm-crypt to check the cipher: they are node tests.)"""
    params = parse_luks_parameters(
        {"cipher": "aes-xts-essiv:sha256", "keySize": "256", "hash": "sha512", "sectorSize": "512"}
    )
    luks_plan = plan(params, "managed", probe_host())
    cryptsetup.format_device(str(header), MANAGED_KEY, luks_plan.format)
    meta = cryptsetup.dump_metadata(str(header))
    segment = meta["segments"]["0"]
    assert (segment["encryption"], segment["sector_size"]) == ("aes-xts-essiv:sha256", 512)
    assert meta["keyslots"]["0"]["key_size"] == 32
    assert meta["keyslots"]["0"]["kdf"]["hash"] == "sha512"
