"""Canary: no DEK or KEK byte sequence (raw, hex, base64) shows in any error or log record.

Every failure path of the keys layer is provoked while logging is captured at DEBUG; the
text of every exception (message, repr, formatted traceback) and every log record is then
searched for every key this test made or loaded, in each encoding.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from cryptvol.errors import CryptvolError
from cryptvol.keys.keyset import dek_key
from cryptvol.keys.manager import open_local
from cryptvol.store.base import Put
from support.canary import forms


def test_no_key_bytes_in_errors_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def expect_failure(action: Callable[[], object]) -> None:
        with pytest.raises(CryptvolError) as info:
            action()
        exc = info.value
        texts.extend([str(exc), repr(exc), "".join(traceback.format_exception(exc))])

    store, km = open_local(tmp_path)
    deks = {f"pvc-{i}": km.create_dek(f"pvc-{i}").reveal() for i in range(3)}
    kek_doc = json.loads((tmp_path / "kek.json").read_text())
    keks = [base64.b64decode(k["key"]) for k in kek_doc["keks"].values()]

    # An envelope moved to another volume, a tampered one, and a damaged one.
    store.txn([], [Put(dek_key("pvc-1"), store.get(dek_key("pvc-0")).value)])  # type: ignore[union-attr]
    expect_failure(lambda: km.get_dek("pvc-1"))
    env = json.loads(store.get(dek_key("pvc-2")).value)  # type: ignore[union-attr]
    env["ct"] = base64.b64encode(b"\x00" + base64.b64decode(env["ct"])[1:]).decode()
    store.txn([], [Put(dek_key("pvc-2"), json.dumps(env).encode())])
    expect_failure(lambda: km.get_dek("pvc-2"))
    store.txn([], [Put(dek_key("pvc-3"), b"garbage")])
    expect_failure(lambda: km.get_dek("pvc-3"))
    expect_failure(lambda: km.get_dek("absent"))
    store.close()

    # The KEK file made unreadable, swapped, or gone.
    kek_file = tmp_path / "kek.json"
    original = kek_file.read_text()
    for damage in (
        '{"v":1,"keks":{}}',
        json.dumps({**json.loads(original), "v": 7}),
        original[:-5],
    ):
        kek_file.write_text(damage)
        expect_failure(lambda: open_local(tmp_path))
    swapped = json.loads(original)
    for item in swapped["keks"].values():
        item["key"] = base64.b64encode(os.urandom(32)).decode()
        keks.append(base64.b64decode(item["key"]))
    kek_file.write_text(json.dumps(swapped))
    expect_failure(lambda: open_local(tmp_path))
    kek_file.unlink()
    expect_failure(lambda: open_local(tmp_path))

    texts.extend(r.getMessage() for r in caplog.records)
    texts.extend(caplog.text.splitlines())
    haystack = "\n".join(texts).encode()
    assert texts
    for secret in [*deks.values(), *keks]:
        for form in forms(secret):
            assert form not in haystack


def test_no_key_bytes_in_rotation_backup_status_or_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cryptvol.cli.keys import keys_group
    from cryptvol.keys import backup
    from cryptvol.keys.config import KeysConfig, open_keys
    from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
    from cryptvol.keys.manager import load_key_set
    from cryptvol.keys.replica import Replica
    from cryptvol.keys.rotation import Rotation
    from cryptvol.system.secret import Secret

    monkeypatch.setattr(backup, "_SCRYPT", {"n": 2**12, "r": 8, "p": 1})
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    root_key = tmp_path / "root.key"
    make_root_key(root_key)
    config = KeysConfig(state_dir=tmp_path, root_key=root_key)
    store, km = open_keys(config)
    deks = [km.create_dek(f"pvc-{i}").reveal() for i in range(5)]
    rotation = Rotation(store, km.provider)
    replica = Replica(km, "r1", count_interval=1, interval=0.05).start()

    def expect_failure(action: Callable[[], object]) -> None:
        with pytest.raises(CryptvolError) as info:
            action()
        texts.extend([str(info.value), "".join(traceback.format_exception(info.value))])

    def cli(*args: str) -> None:
        args = (*args, "--state-dir", str(tmp_path), "--root-key", str(root_key))
        texts.append(CliRunner().invoke(keys_group, list(args)).output)

    keks: list[bytes] = []
    for step in (rotation.prepare, rotation.rotate, rotation.reencrypt):
        keks += [k.key.reveal() for k in load_key_set(store, km.provider).keks.values()]
        texts.append(json.dumps(replica.status()))
        cli("status")
        cli("status", "--json")
        step(wait=10)  # type: ignore[operator]
    pass_file = tmp_path / "pass"
    pass_file.write_text("a long enough passphrase")
    cli("export", "--out", str(tmp_path / "b.json"), "--passphrase-file", str(pass_file))
    blob = (tmp_path / "b.json").read_bytes()
    expect_failure(lambda: backup.import_keys(store, km.provider, blob, Secret(b"x" * 20)))
    root = json.loads(root_key.read_text())["key"]
    keks.append(base64.b64decode(root))
    root_key.write_text(json.dumps({"v": 1, "key": base64.b64encode(os.urandom(32)).decode()}))
    keks.append(base64.b64decode(json.loads(root_key.read_text())["key"]))
    expect_failure(lambda: load_key_set(store, RootKeyProvider(root_key)))
    replica.stop()
    replica.manager.provider = RootKeyProvider(root_key)
    expect_failure(replica.manager.reload)
    replica.tick()
    texts.append(json.dumps(replica.status()))
    cli("status", "--json")
    store.close()

    texts.extend(r.getMessage() for r in caplog.records)
    haystack = "\n".join(texts).encode()
    for secret in [*deks, *keks]:
        for form in forms(secret):
            assert form not in haystack
