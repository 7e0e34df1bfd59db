"""`keys export` / `keys import`: a passphrase-protected backup of the KEK set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.keys import backup
from cryptvol.keys.backup import export_keys, import_keys
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import KEYSET_KEY, KeySetRecord
from cryptvol.keys.manager import KeyManager, open_local
from cryptvol.keys.rotation import Rotation
from cryptvol.store.base import Put
from cryptvol.store.sqlite import SqliteStore
from cryptvol.system.secret import Secret

PASS = Secret(b"correct horse battery staple")


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real cost (n=2**17) is for people's backups; the format records n, so a cheaper
    # one here still goes through the same code.
    monkeypatch.setattr(backup, "_SCRYPT", {"n": 2**12, "r": 8, "p": 1})


def test_a_lost_kek_file_is_restored_from_the_backup(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    dek = km.create_dek("pvc-1")
    Rotation(store, km.provider).prepare(wait=0)
    blob = export_keys(store, km.provider, PASS)
    assert b"pvc" not in blob and json.loads(blob)["format"] == "cryptvol-kek-backup"
    (tmp_path / "kek.json").unlink()
    with pytest.raises(FailedPrecondition, match="missing"):
        KeyManager(store, LocalKekProvider(tmp_path))
    assert len(import_keys(store, LocalKekProvider(tmp_path), blob, PASS)) == 2
    assert KeyManager(store, LocalKekProvider(tmp_path)).get_dek("pvc-1") == dek
    store.close()


def test_a_lost_root_key_is_replaced_by_resealing_under_a_new_one(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    make_root_key(tmp_path / "root.key")
    km = KeyManager(store, RootKeyProvider(tmp_path / "root.key"))
    dek = km.create_dek("pvc-1")
    old_fp = km.provider.sealer()
    blob = export_keys(store, km.provider, PASS)
    (tmp_path / "root.key").unlink()
    make_root_key(tmp_path / "new-root.key")
    new_root = RootKeyProvider(tmp_path / "new-root.key")
    with pytest.raises(FailedPrecondition):
        KeyManager(store, new_root)
    before = store.revision()
    with pytest.raises(FailedPrecondition, match=f"{old_fp}.*{new_root.sealer()}.*--reseal"):
        import_keys(store, new_root, blob, PASS)
    assert store.revision() == before
    import_keys(store, new_root, blob, PASS, reseal=True)
    assert KeyManager(store, new_root).get_dek("pvc-1") == dek
    record = KeySetRecord.from_bytes(store.get(KEYSET_KEY).value)  # type: ignore[union-attr]
    assert record.sealed_by == new_root.sealer()


def test_a_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    blob = export_keys(store, km.provider, PASS)
    with pytest.raises(InvalidArgument, match="passphrase is wrong"):
        import_keys(store, km.provider, blob, Secret(b"not the passphrase at all"))


def test_a_backup_whose_kek_differs_from_the_recorded_one_is_refused(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    blob = export_keys(store, km.provider, PASS)
    entry = store.get(KEYSET_KEY)
    assert entry is not None
    record = json.loads(entry.value)
    record["keks"][0]["fingerprint"] = "0" * 32  # the store now records another key
    store.txn([], [Put(KEYSET_KEY, json.dumps(record).encode())])
    with pytest.raises(InvalidArgument, match="fingerprints differ"):
        import_keys(store, km.provider, blob, PASS)
    store.close()


def test_a_short_passphrase_and_a_damaged_backup_are_refused(tmp_path: Path) -> None:
    store, km = open_local(tmp_path)
    with pytest.raises(InvalidArgument, match="at least 12"):
        export_keys(store, km.provider, Secret(b"short"))
    with pytest.raises(InvalidArgument, match="not a cryptvol KEK backup"):
        import_keys(store, km.provider, b"{}", PASS)
