"""On a COS-like host (cryptsetup without argon2): the planned options format, the fallback
is recorded, and `pbkdfFallback: false` is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.luks import cryptsetup
from cryptvol.luks.cryptsetup import FormatOptions
from cryptvol.luks.policy import parse_luks_parameters, plan
from cryptvol.luks.probe import probe_host
from cryptvol.luks.token import read_policy_token, write_policy_token
from cryptvol.system import CommandError
from cryptvol.system.secret import Secret

PASSPHRASE = Secret(b"correct horse battery staple")


def test_the_cos_build_fails_like_cos_when_asked_for_argon2(cos_host: Path, header: Path) -> None:
    """The problem this layer solves: formatting with argon2id regardless of the host."""
    with pytest.raises(CommandError) as err:
        cryptsetup.format_device(str(header), PASSPHRASE, FormatOptions(pbkdf="argon2id"))
    assert "Not compatible PBKDF options" in err.value.stderr
    assert not cryptsetup.is_luks(str(header))


def test_argon2id_asked_with_fallback_formats_with_pbkdf2_and_says_so(
    cos_host: Path, header: Path
) -> None:
    host = probe_host()
    params = parse_luks_parameters({"pbkdf": "argon2id", "iterTime": "50"})
    luks_plan = plan(params, "passphrase", host)
    assert luks_plan.fell_back
    assert luks_plan.describe().startswith("argon2id asked, host cryptsetup lacks it")

    cryptsetup.format_device(str(header), PASSPHRASE, luks_plan.format)
    write_policy_token(str(header), params, luks_plan, host)

    assert cryptsetup.test_key(str(header), PASSPHRASE)
    assert cryptsetup.keyslot_memory_kib(str(header)) == 0
    kdf = cryptsetup.dump_metadata(str(header))["keyslots"]["0"]["kdf"]
    assert kdf["type"] == "pbkdf2"
    recorded = read_policy_token(str(header))
    assert recorded is not None
    assert recorded.describe() == luks_plan.describe()
    assert recorded.parameters == {"pbkdf": "argon2id", "iter_time_ms": 50}
    assert recorded.host["argon2"] is False


def test_argon2id_without_fallback_is_refused_before_anything_is_written(
    cos_host: Path, header: Path
) -> None:
    params = parse_luks_parameters({"pbkdf": "argon2id", "pbkdfFallback": "false"})
    with pytest.raises(FailedPrecondition, match="pbkdfFallback false"):
        plan(params, "passphrase", probe_host())
    assert header.read_bytes().count(0) == header.stat().st_size


def test_managed_keys_format_and_unlock_on_cos(cos_host: Path, header: Path) -> None:
    key = Secret(bytes(range(32)))
    luks_plan = plan(parse_luks_parameters({}), "managed", probe_host())
    cryptsetup.format_device(str(header), key, luks_plan.format)
    assert cryptsetup.test_key(str(header), key)
