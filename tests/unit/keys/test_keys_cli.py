"""`cryptvol keys` on the embedded store, through click's runner and the root group (which
turns errors into their one-line message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryptvol.cli.main import cli
from cryptvol.keys import backup
from cryptvol.keys.manager import open_local


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store, km = open_local(tmp_path / "state")
    for i in range(30):
        km.create_dek(f"pvc-{i}")
    store.close()
    return tmp_path / "state"


def keys(*args: str, ok: bool = True, input: str | None = None) -> str:
    result = CliRunner().invoke(cli, ["keys", *args], input=input)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_status_shows_stage_keks_and_deks_as_table_and_json(state: Path) -> None:
    table = keys("status", "--state-dir", str(state))
    assert "stage:        start   (next: prepare)" in table
    assert "DEKs:         30" in table and "replicas:     none live" in table
    doc = json.loads(keys("status", "--json", "--state-dir", str(state)))
    assert doc["stage"] == "start" and doc["deks"] == 30 and len(doc["keks"]) == 1


def test_a_whole_rotation_from_the_command_line(state: Path) -> None:
    d = ["--state-dir", str(state)]
    assert "prepared KEK" in keys("prepare", *d)
    assert "now wraps new keys" in keys("rotate", *d)
    out = keys("reencrypt", *d)
    assert "30 DEKs checked, 30 re-wrapped" in out
    doc = json.loads(keys("status", "--json", *d))
    assert doc["stage"] == "reencrypt_finished" and len(doc["retired"]) == 1
    assert doc["reencrypt"]["done"] == 30 and doc["reencrypt"]["finished"]


def test_out_of_order_is_refused_with_the_stage_and_what_may_come_next(state: Path) -> None:
    out = keys("rotate", "--state-dir", str(state), ok=False)
    assert "cannot rotate: the stage is start; allowed next from there: prepare" in out
    out = keys("reencrypt", "--force", "--state-dir", str(state))
    assert "--force: skipping the stage order and the wait for every replica" in out


def test_export_and_import_read_the_passphrase_from_a_file_or_prompt(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup, "_SCRYPT", {"n": 2**12, "r": 8, "p": 1})
    secret_file = tmp_path / "pass"
    secret_file.write_text("a long enough passphrase\n")
    out_file = tmp_path / "backup.json"
    d = ["--state-dir", str(state)]
    keys("export", "--out", str(out_file), "--passphrase-file", str(secret_file), *d)
    assert out_file.stat().st_mode & 0o777 == 0o600
    keys("export", "--out", str(out_file), "--passphrase-file", str(secret_file), *d, ok=False)
    (state / "kek.json").unlink()
    assert "restored KEK" in keys(
        "import", str(out_file), "--passphrase-file", str(secret_file), *d
    )
    # There is no option that takes a passphrase on the command line.
    out = keys("import", str(out_file), "--passphrase", "x", *d, ok=False)
    assert "No such option" in out
