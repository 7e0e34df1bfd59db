"""probe_host() and `cryptvol doctor` on this machine's cryptsetup and on a COS-like build."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cryptvol.cli.doctor import doctor_command
from cryptvol.luks.probe import HostProbe, probe_host


def test_the_stock_debian_cryptsetup_runs_every_pbkdf() -> None:
    host = probe_host()
    assert host.cryptsetup_version is not None
    assert host.luks2
    assert [c.name for c in host.pbkdfs if c.available] == ["pbkdf2", "argon2i", "argon2id"]
    assert host.argon2
    assert host.memory_total_kib > 0
    assert host.crypto_aes_drivers  # /proc/crypto lists at least the generic aes
    assert host.seconds < 30  # a bound against a hang, not a speed figure (load varies)


def test_a_probe_round_trips_through_json() -> None:
    host = probe_host()
    assert HostProbe.from_json(host.to_json()) == host


def test_the_cos_build_is_found_without_argon2(cos_host: Path) -> None:
    host = probe_host()
    assert host.luks2
    assert host.pbkdf_available("pbkdf2")
    assert not host.argon2
    assert host.pbkdf_detail("argon2id") == "Not compatible PBKDF options."
    assert host.seconds < 30  # a bound against a hang, not a speed figure (load varies)


def test_doctor_reports_argon2_unavailable_on_cos(cos_host: Path) -> None:
    result = CliRunner().invoke(doctor_command, [])
    assert "argon2: unavailable" in result.output
    assert "fall back to pbkdf2" in result.output


def test_doctor_json_carries_checks_and_the_probe(cos_host: Path) -> None:
    result = CliRunner().invoke(doctor_command, ["--json"])
    report = json.loads(result.output)
    argon2 = next(c for c in report["checks"] if c["name"] == "argon2")
    assert (argon2["value"], argon2["verdict"]) == ("unavailable", "warn")
    assert HostProbe.model_validate(report["probe"]).argon2 is False


def test_doctor_exit_code_follows_dm_crypt() -> None:
    """This host's kernel has no device-mapper: doctor fails the dm-crypt line, exit 1.
    On a node with dm-crypt (the VM) it would pass."""
    result = CliRunner().invoke(doctor_command, ["--json"])
    report = json.loads(result.output)
    dm = next(c for c in report["checks"] if c["name"] == "dm-crypt")
    assert result.exit_code == (1 if dm["verdict"] == "fail" else 0)
    if dm["verdict"] == "fail":
        assert report["verdict"] == "fail"
        perf = next(c for c in report["checks"] if c["name"] == "perf flags")
        assert perf["verdict"] == "skip"
