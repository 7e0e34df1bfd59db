"""`cryptvol keys` on the embedded store, through click's runner and the root group (which
turns errors into their one-line message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cryptvol.cli.main import cli
from cryptvol.keys import backup, rotation
from cryptvol.keys.manager import open_local
from cryptvol.keys.rotation import Rotation


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
    assert "reencrypt finished: all 30 DEKs in the store are wrapped under kek-" in out
    assert "reencrypt:    finished: 30 DEKs under kek-" in keys("status", *d)
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


def test_a_resumed_reencrypt_reports_what_the_store_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches committed after the last cursor save are walked again by the resumed run and
    found current; the final report must still count every DEK the store holds."""
    state = tmp_path / "state"
    store, km = open_local(state)
    for i in range(200):
        km.create_dek(f"pvc-{i:03d}")
    d = ["--state-dir", str(state)]
    keys("prepare", *d)
    keys("rotate", *d)
    new = Rotation(store).read()[0].current.id
    monkeypatch.setattr(rotation, "CURSOR_EVERY", 3600.0)  # the cursor is saved rarely

    class Crash(Exception):
        pass

    def crash(done: int, total: int) -> None:
        if done >= 120:
            raise Crash

    with pytest.raises(Crash):
        Rotation(store, km.provider).reencrypt(wait=0, batch=10, progress=crash)
    store.close()
    out = keys("reencrypt", "--batch", "10", *d)
    assert f"all 200 DEKs in the store are wrapped under {new}" in out, out
    assert "old KEKs retired" in out
    doc = json.loads(keys("status", "--json", *d))
    assert doc["reencrypt"]["done"] == doc["reencrypt"]["total"] == 200
