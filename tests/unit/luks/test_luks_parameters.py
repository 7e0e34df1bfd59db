"""StorageClass LUKS keys: every key parses its accepted values and names itself when wrong."""

from __future__ import annotations

from typing import Any

import pytest

from cryptvol.errors import InvalidArgument
from cryptvol.luks.policy import LUKS_PARAMETER_KEYS, LuksParameters, parse_luks_parameters


def test_the_layer_owns_exactly_the_keys_the_issue_lists() -> None:
    assert {
        "cipher",
        "keySize",
        "hash",
        "pbkdf",
        "pbkdfMemory",
        "pbkdfParallel",
        "iterTime",
        "sectorSize",
        "perfNoReadWorkqueue",
        "perfNoWriteWorkqueue",
        "allowDiscards",
        "pbkdfFallback",
        "volumeKeyInKeyring",
    } == LUKS_PARAMETER_KEYS


def test_no_parameters_give_the_defaults() -> None:
    params = parse_luks_parameters({})
    assert params == LuksParameters()
    assert (params.cipher, params.key_size, params.hash) == ("aes-xts-plain64", 512, "sha256")
    assert params.pbkdf == "auto"
    assert params.pbkdf_fallback is True
    assert params.volume_key_in_keyring is True
    assert not (
        params.allow_discards or params.perf_no_read_workqueue or params.perf_no_write_workqueue
    )


def test_keys_of_other_layers_are_left_alone() -> None:
    assert parse_luks_parameters({"keySource": "managed", "fsType": "xfs"}) == LuksParameters()


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("cipher", "serpent-xts-plain64", "cipher", "serpent-xts-plain64"),
        ("cipher", "aes-cbc-essiv:sha256", "cipher", "aes-cbc-essiv:sha256"),
        ("keySize", "256", "key_size", 256),
        ("keySize", "512", "key_size", 512),
        ("hash", "sha512", "hash", "sha512"),
        ("pbkdf", "auto", "pbkdf", "auto"),
        ("pbkdf", "argon2id", "pbkdf", "argon2id"),
        ("pbkdf", "argon2i", "pbkdf", "argon2i"),
        ("pbkdf", "pbkdf2", "pbkdf", "pbkdf2"),
        ("pbkdfMemory", "32", "pbkdf_memory_kib", 32),
        ("pbkdfMemory", "32768", "pbkdf_memory_kib", 32768),
        ("pbkdfMemory", "4194304", "pbkdf_memory_kib", 4194304),
        ("pbkdfParallel", "1", "pbkdf_parallel", 1),
        ("pbkdfParallel", "4", "pbkdf_parallel", 4),
        ("iterTime", "200", "iter_time_ms", 200),
        ("sectorSize", "512", "sector_size", 512),
        ("sectorSize", "4096", "sector_size", 4096),
        ("perfNoReadWorkqueue", "true", "perf_no_read_workqueue", True),
        ("perfNoWriteWorkqueue", "True", "perf_no_write_workqueue", True),
        ("allowDiscards", "true", "allow_discards", True),
        ("allowDiscards", "false", "allow_discards", False),
        ("pbkdfFallback", "false", "pbkdf_fallback", False),
        ("pbkdfFallback", "true", "pbkdf_fallback", True),
        ("volumeKeyInKeyring", "false", "volume_key_in_keyring", False),
        ("volumeKeyInKeyring", "true", "volume_key_in_keyring", True),
    ],
)
def test_accepted_values_parse(key: str, value: str, field: str, expected: Any) -> None:
    assert getattr(parse_luks_parameters({key: value}), field) == expected


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("cipher", "rot13", "aes-xts-plain64"),
        ("cipher", "", "aes-xts-plain64"),
        ("keySize", "384", "128, 192, 256, 512"),
        ("keySize", "big", "128, 192, 256, 512"),
        ("hash", "md5", "sha256, sha384, sha512"),
        ("pbkdf", "scrypt", "auto, argon2id, argon2i, pbkdf2"),
        ("pbkdf", "ARGON2ID", "auto, argon2id, argon2i, pbkdf2"),
        ("pbkdfMemory", "16", "an integer from 32 to 4194304 (KiB)"),
        ("pbkdfMemory", "1G", "an integer from 32 to 4194304 (KiB)"),
        ("pbkdfMemory", "-1", "an integer from 32 to 4194304 (KiB)"),
        ("pbkdfMemory", "4194305", "an integer from 32 to 4194304 (KiB)"),
        ("pbkdfParallel", "0", "an integer from 1 to 16"),
        ("pbkdfParallel", "17", "an integer from 1 to 16"),
        ("iterTime", "0", "an integer from 1 to 60000 (milliseconds)"),
        ("iterTime", "2s", "an integer from 1 to 60000 (milliseconds)"),
        ("sectorSize", "1024", "512, 4096"),
        ("sectorSize", "4k", "512, 4096"),
        ("perfNoReadWorkqueue", "maybe", "true, false"),
        ("perfNoWriteWorkqueue", "", "true, false"),
        ("allowDiscards", "on-ish", "true, false"),
        ("pbkdfFallback", "never", "true, false"),
        ("volumeKeyInKeyring", "dm", "true, false"),
    ],
)
def test_a_bad_value_names_the_key_and_the_accepted_values(
    key: str, value: str, accepted: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_luks_parameters({key: value})
    message = str(err.value)
    assert repr(key) in message
    assert f"accepted values: {accepted}" in message


def test_key_size_must_fit_the_cipher() -> None:
    with pytest.raises(InvalidArgument, match=r"'keySize'.*accepted values: 128, 192, 256"):
        parse_luks_parameters({"cipher": "aes-cbc-essiv:sha256", "keySize": "512"})


def test_key_size_defaults_to_the_largest_the_cipher_takes() -> None:
    assert parse_luks_parameters({"cipher": "aes-cbc-essiv:sha256"}).key_size == 256
    assert parse_luks_parameters({"cipher": "serpent-xts-plain64"}).key_size == 512


def test_parameters_survive_a_json_round_trip() -> None:
    params = parse_luks_parameters(
        {
            "pbkdf": "argon2id",
            "pbkdfMemory": "65536",
            "allowDiscards": "true",
            "volumeKeyInKeyring": "false",
        }
    )
    assert LuksParameters.model_validate_json(params.model_dump_json()) == params
