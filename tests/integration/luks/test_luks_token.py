"""The cryptvol-policy token: the header explains itself, holds no secret, unlocks nothing."""

from __future__ import annotations

from pathlib import Path

from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import parse_luks_parameters, plan
from cryptvol.luks.probe import probe_host
from cryptvol.luks.token import TOKEN_TYPE, read_policy_token, write_policy_token
from cryptvol.system import run
from cryptvol.system.secret import Secret

PASSPHRASE = Secret(b"a passphrase nobody may read back")


def _formatted(header: Path, params: dict[str, str]) -> tuple[str, object]:
    host = probe_host()
    luks_params = parse_luks_parameters(params)
    luks_plan = plan(luks_params, "passphrase", host)
    cryptsetup.format_device(str(header), PASSPHRASE, luks_plan.format)
    write_policy_token(str(header), luks_params, luks_plan, host)
    return str(header), luks_plan


def test_the_header_explains_itself_to_plain_cryptsetup(header: Path) -> None:
    device, _ = _formatted(header, {"pbkdf": "pbkdf2", "iterTime": "50", "allowDiscards": "true"})
    token_id = next(
        int(i)
        for i, t in cryptsetup.dump_metadata(device)["tokens"].items()
        if t["type"] == TOKEN_TYPE
    )
    exported = cryptsetup.token_export(device, token_id)
    assert exported is not None
    assert exported["type"] == TOKEN_TYPE
    assert exported["keyslots"] == []
    assert exported["reasons"] == ["passphrase: pbkdf2 as asked"]
    assert exported["open"]["allow_discards"] is True
    assert exported["format"]["pbkdf"] == "pbkdf2"
    dump = run(["cryptsetup", "luksDump", device]).stdout
    assert TOKEN_TYPE in dump


def test_the_token_holds_no_secret_and_unlocking_still_works(header: Path) -> None:
    device, _ = _formatted(header, {"pbkdf": "pbkdf2", "iterTime": "50"})
    raw = header.read_bytes()
    assert PASSPHRASE.reveal() not in raw
    assert cryptsetup.test_key(device, PASSPHRASE)


def test_writing_again_replaces_the_token(header: Path) -> None:
    device, _ = _formatted(header, {"pbkdf": "pbkdf2", "iterTime": "50"})
    params = parse_luks_parameters({"pbkdf": "pbkdf2", "iterTime": "50", "allowDiscards": "true"})
    write_policy_token(device, params, plan(params, "passphrase", None))
    tokens = cryptsetup.dump_metadata(device)["tokens"]
    assert [t["type"] for t in tokens.values()] == [TOKEN_TYPE]
    recorded = read_policy_token(device)
    assert recorded is not None
    assert recorded.parameters == {"pbkdf": "pbkdf2", "iter_time_ms": 50, "allow_discards": True}
    assert recorded.host == {}


def test_a_header_without_the_token_reads_as_none(header: Path) -> None:
    cryptsetup.format_device(
        str(header), PASSPHRASE, plan(parse_luks_parameters({}), "managed", None).format
    )
    assert read_policy_token(str(header)) is None
