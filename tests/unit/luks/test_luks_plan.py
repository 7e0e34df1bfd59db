"""plan(): what each kind of key gets on each kind of host, and why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.luks.budget import CRYPTSETUP_PROCESS_KIB
from cryptvol.luks.policy import (
    ARGON2_DEFAULT_MEMORY_KIB,
    PBKDF2_MIN_ITERATIONS,
    parse_luks_parameters,
    plan,
)
from cryptvol.luks.probe import HostProbe

MakeHost = Callable[..., HostProbe]  # the make_host fixture (conftest.py)

HOSTS = {
    "stock": {},
    "cos": {"argon2": False},
    "fips": {"fips": True},
}


@pytest.mark.parametrize("host_kind", [*HOSTS, "unprobed"])
@pytest.mark.parametrize("pbkdf", ["auto", "argon2id", "pbkdf2"])
@pytest.mark.parametrize("fallback", ["true", "false"])
def test_managed_keys_always_get_minimum_pbkdf2(
    make_host: MakeHost, host_kind: str, pbkdf: str, fallback: str
) -> None:
    host = None if host_kind == "unprobed" else make_host(**HOSTS[host_kind])
    params = parse_luks_parameters({"pbkdf": pbkdf, "pbkdfFallback": fallback})
    p = plan(params, "managed", host)
    assert p.format.pbkdf == "pbkdf2"
    assert p.format.pbkdf_force_iterations == PBKDF2_MIN_ITERATIONS
    assert p.unlock_memory_kib == CRYPTSETUP_PROCESS_KIB
    assert not p.fell_back
    assert p.describe().startswith("managed random key: pbkdf2 at minimum iterations")


def test_managed_plan_says_passphrase_tuning_does_not_apply(make_host: MakeHost) -> None:
    params = parse_luks_parameters({"pbkdf": "argon2id", "pbkdfMemory": "65536"})
    described = plan(params, "managed", make_host()).describe()
    assert "pbkdf, pbkdfMemory apply to passphrases only" in described


@pytest.mark.parametrize("pbkdf", ["argon2id", "argon2i"])
def test_passphrase_keeps_the_memory_hard_pbkdf_where_the_host_has_it(
    make_host: MakeHost, pbkdf: str
) -> None:
    params = parse_luks_parameters(
        {"pbkdf": pbkdf, "pbkdfMemory": "32768", "pbkdfParallel": "2", "iterTime": "500"}
    )
    p = plan(params, "passphrase", make_host())
    assert (p.format.pbkdf, p.format.pbkdf_memory_kib) == (pbkdf, 32768)
    assert (p.format.pbkdf_parallel, p.format.iter_time_ms) == (2, 500)
    assert p.format.pbkdf_force_iterations is None
    assert p.unlock_memory_kib == 32768 + CRYPTSETUP_PROCESS_KIB
    assert p.describe() == f"passphrase: {pbkdf} as asked"


def test_passphrase_auto_means_argon2id_with_cryptsetups_memory(make_host: MakeHost) -> None:
    p = plan(parse_luks_parameters({}), "passphrase", make_host())
    assert p.format.pbkdf == "argon2id"
    assert p.format.pbkdf_memory_kib == ARGON2_DEFAULT_MEMORY_KIB
    assert p.describe() == "passphrase: argon2id (pbkdf auto)"


@pytest.mark.parametrize("pbkdf", ["argon2id", "argon2i"])
def test_cos_host_falls_back_to_pbkdf2_and_says_why(make_host: MakeHost, pbkdf: str) -> None:
    p = plan(parse_luks_parameters({"pbkdf": pbkdf}), "passphrase", make_host(argon2=False))
    assert p.format.pbkdf == "pbkdf2"
    assert p.format.pbkdf_memory_kib is None
    assert p.fell_back
    assert p.unlock_memory_kib == CRYPTSETUP_PROCESS_KIB
    assert p.describe().startswith(f"{pbkdf} asked, host cryptsetup lacks it")
    assert p.describe().endswith("fell back to pbkdf2")


def test_fips_host_falls_back_and_names_fips(make_host: MakeHost) -> None:
    p = plan(parse_luks_parameters({"pbkdf": "argon2id"}), "passphrase", make_host(fips=True))
    assert p.format.pbkdf == "pbkdf2"
    assert p.describe() == (
        "argon2id asked, host is in FIPS mode and its cryptsetup refuses argon2id, "
        "fell back to pbkdf2"
    )


@pytest.mark.parametrize("host_kind", ["cos", "fips"])
def test_no_fallback_refuses_before_anything_is_written(
    make_host: MakeHost, host_kind: str
) -> None:
    params = parse_luks_parameters({"pbkdf": "argon2id", "pbkdfFallback": "false"})
    with pytest.raises(FailedPrecondition) as err:
        plan(params, "passphrase", make_host(**HOSTS[host_kind]))
    message = str(err.value)
    assert "pbkdfFallback false" in message
    assert "argon2id" in message
    assert "set pbkdfFallback to true" in message


def test_no_fallback_is_fine_where_argon2_runs(make_host: MakeHost) -> None:
    params = parse_luks_parameters({"pbkdf": "argon2id", "pbkdfFallback": "false"})
    assert plan(params, "passphrase", make_host()).format.pbkdf == "argon2id"


def test_auto_adapts_even_without_fallback(make_host: MakeHost) -> None:
    """`auto` asks for the best PBKDF the host has, so pbkdf2 on COS is not a fallback from
    an explicit wish and is not refused."""
    params = parse_luks_parameters({"pbkdfFallback": "false"})
    p = plan(params, "passphrase", make_host(argon2=False))
    assert p.format.pbkdf == "pbkdf2"
    assert p.describe().startswith("auto asked, host cryptsetup lacks it")


def test_passphrase_pbkdf2_keeps_the_asked_iteration_time(make_host: MakeHost) -> None:
    params = parse_luks_parameters({"pbkdf": "pbkdf2", "iterTime": "300", "hash": "sha512"})
    p = plan(params, "passphrase", make_host())
    assert (p.format.pbkdf, p.format.iter_time_ms, p.format.hash) == ("pbkdf2", 300, "sha512")
    assert p.format.pbkdf_force_iterations is None


def test_host_without_luks2_is_refused_for_every_key(make_host: MakeHost) -> None:
    for kind in ("managed", "passphrase"):
        with pytest.raises(FailedPrecondition, match="cannot format LUKS2"):
            plan(parse_luks_parameters({}), kind, make_host(luks2=False))


def test_argon2_memory_is_capped_to_half_the_node(make_host: MakeHost) -> None:
    small = make_host(memory_kib=1024 * 1024)
    p = plan(parse_luks_parameters({}), "passphrase", small, budget_kib=1024 * 1024)
    assert p.format.pbkdf_memory_kib == 512 * 1024


def test_default_argon2_memory_fits_the_unlock_budget(make_host: MakeHost) -> None:
    p = plan(parse_luks_parameters({}), "passphrase", make_host(), budget_kib=256 * 1024)
    assert p.unlock_memory_kib == 256 * 1024
    assert "capped" in p.describe()


def test_asked_argon2_memory_above_the_budget_is_refused(make_host: MakeHost) -> None:
    params = parse_luks_parameters({"pbkdfMemory": "1048576"})
    with pytest.raises(FailedPrecondition, match="whole unlock memory budget"):
        plan(params, "passphrase", make_host(), budget_kib=512 * 1024)


def test_open_options_follow_the_storage_class(make_host: MakeHost) -> None:
    params = parse_luks_parameters(
        {
            "perfNoReadWorkqueue": "true",
            "perfNoWriteWorkqueue": "true",
            "allowDiscards": "true",
            "volumeKeyInKeyring": "false",
        }
    )
    opened = plan(params, "managed", make_host()).open
    assert opened.perf_no_read_workqueue and opened.perf_no_write_workqueue
    assert opened.allow_discards
    assert opened.disable_keyring
    assert opened.argv() == [
        "--allow-discards",
        "--perf-no_read_workqueue",
        "--perf-no_write_workqueue",
        "--disable-keyring",
    ]


def test_keyring_is_the_default_where_the_kernel_allows_it(make_host: MakeHost) -> None:
    assert not plan(parse_luks_parameters({}), "managed", make_host()).open.disable_keyring


def test_unusable_keyring_keeps_the_key_in_the_dm_table(make_host: MakeHost) -> None:
    p = plan(parse_luks_parameters({}), "managed", make_host(keyring=False))
    assert p.open.disable_keyring
    assert "kernel keyring unusable" in p.describe()


def test_workqueue_flags_an_old_kernel_refuses_are_left_out(make_host: MakeHost) -> None:
    params = parse_luks_parameters({"perfNoReadWorkqueue": "true", "allowDiscards": "true"})
    p = plan(params, "managed", make_host(workqueue_flags=False))
    assert not p.open.perf_no_read_workqueue
    assert p.open.allow_discards
    assert "no_read_workqueue asked, host dm-crypt does not accept it" in p.describe()


def test_plan_record_is_json(make_host: MakeHost) -> None:
    p = plan(parse_luks_parameters({"pbkdf": "argon2id"}), "passphrase", make_host(argon2=False))
    record = json.loads(json.dumps(p.to_record()))
    assert record["format"]["pbkdf"] == "pbkdf2"
    assert record["fell_back"] is True
    assert record["pbkdf_asked"] == "argon2id"


def test_plan_runs_no_command(
    make_host: MakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateVolume plans before writing anything: the runner's audit log stays empty."""
    audit = tmp_path / "exec.jsonl"
    monkeypatch.setenv("CRYPTVOL_EXEC_AUDIT", str(audit))
    for kind in ("managed", "passphrase"):
        plan(parse_luks_parameters({}), kind, make_host(argon2=False))
        plan(parse_luks_parameters({}), kind, None)
    assert not audit.exists()
