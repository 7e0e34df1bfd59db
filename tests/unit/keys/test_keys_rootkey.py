"""The root-key KEK provider: KEKs sealed under a 0600 root key, kept in the key-set record."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import KEYSET_KEY
from cryptvol.keys.manager import KeyManager
from cryptvol.keys.rotation import Rotation
from cryptvol.store.base import Put
from cryptvol.store.sqlite import SqliteStore


def root_provider(path: Path) -> RootKeyProvider:
    make_root_key(path)
    return RootKeyProvider(path)


def test_a_kek_sealed_under_the_root_key_opens_again(tmp_path: Path) -> None:
    provider = root_provider(tmp_path / "root.key")
    kek, ref = provider.create("kek-1")
    assert stat.S_IMODE((tmp_path / "root.key").stat().st_mode) == 0o600
    assert ref.startswith("rootkey:v1:")
    assert RootKeyProvider(tmp_path / "root.key").open("kek-1", ref, 0).key == kek.key


def test_a_sealed_kek_does_not_open_under_another_id(tmp_path: Path) -> None:
    provider = root_provider(tmp_path / "root.key")
    _, ref = provider.create("kek-1")
    with pytest.raises(FailedPrecondition, match="record was altered"):
        provider.open("kek-2", ref, 0)


def test_another_root_key_is_named_by_fingerprint(tmp_path: Path) -> None:
    _, ref = root_provider(tmp_path / "a.key").create("kek-1")
    make_root_key(tmp_path / "b.key")
    with pytest.raises(FailedPrecondition, match="sealed by the root key with fingerprint"):
        RootKeyProvider(tmp_path / "b.key").open("kek-1", ref, 0)


def test_a_missing_root_key_is_refused_never_remade(tmp_path: Path) -> None:
    provider = root_provider(tmp_path / "root.key")
    kek, ref = provider.create("kek-1")
    (tmp_path / "root.key").unlink()
    missing = r"root key file .* does not exist.*only `cryptvol keys init-root-key"
    for action in (
        lambda: provider.open("kek-1", ref, 0),
        lambda: provider.create("kek-2"),
        lambda: provider.restore(kek),
        provider.sealer,
    ):
        with pytest.raises(FailedPrecondition, match=missing):
            action()
    assert list(tmp_path.iterdir()) == []


def test_make_root_key_never_overwrites(tmp_path: Path) -> None:
    make_root_key(tmp_path / "root.key")
    before = (tmp_path / "root.key").read_bytes()
    with pytest.raises(FailedPrecondition, match="never overwrites"):
        make_root_key(tmp_path / "root.key")
    assert (tmp_path / "root.key").read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"{}", b'{"v":1,"key":"AAAA"}'])
def test_a_corrupt_root_key_is_refused(tmp_path: Path, content: bytes) -> None:
    provider = root_provider(tmp_path / "root.key")
    _, ref = provider.create("kek-1")
    (tmp_path / "root.key").write_bytes(content)
    with pytest.raises(FailedPrecondition, match="is corrupt"):
        provider.open("kek-1", ref, 0)


def test_a_root_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    make_root_key(tmp_path / "root.key")
    os.chmod(tmp_path / "root.key", 0o640)
    with pytest.raises(FailedPrecondition, match="mode 0640"):
        RootKeyProvider(tmp_path / "root.key").create("kek-1")


def test_with_sqlite_the_kek_set_lives_sealed_in_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    km = KeyManager(store, root_provider(tmp_path / "root.key"))
    dek = km.create_dek("pvc-1")
    record = json.loads(store.get(KEYSET_KEY).value)  # type: ignore[union-attr]
    assert record["keks"][0]["ref"].startswith("rootkey:v1:")
    assert record["sealed_by"] == km.provider.sealer()
    again = KeyManager(store, RootKeyProvider(tmp_path / "root.key"))
    assert again.get_dek("pvc-1") == dek
    assert not list(tmp_path.glob("kek.json"))


def sealed_store(tmp_path: Path) -> tuple[SqliteStore, RootKeyProvider]:
    """A store whose key set (with one DEK) is sealed by the root key `ours.key`."""
    store = SqliteStore(tmp_path / "db")
    ours = root_provider(tmp_path / "ours.key")
    KeyManager(store, ours).create_dek("pvc-1")
    return store, ours


def test_prepare_under_another_root_key_is_refused_naming_both_and_writes_nothing(
    tmp_path: Path,
) -> None:
    store, ours = sealed_store(tmp_path)
    other = root_provider(tmp_path / "other.key")
    before = store.revision()
    with pytest.raises(FailedPrecondition) as info:
        Rotation(store, other).prepare(wait=0)
    assert f"sealed by the root key with fingerprint {ours.sealer()}" in str(info.value)
    assert f"{other.path} has fingerprint {other.sealer()}" in str(info.value)
    assert store.revision() == before
    Rotation(store, ours).prepare(wait=0)


def test_a_key_set_that_never_recorded_its_root_key_gets_it_recorded_at_the_next_seal(
    tmp_path: Path,
) -> None:
    """Key sets written before the fingerprint was recorded: the KEKs' references say it."""
    store, ours = sealed_store(tmp_path)
    record = json.loads(store.get(KEYSET_KEY).value)  # type: ignore[union-attr]
    del record["sealed_by"]
    store.txn([], [Put(KEYSET_KEY, json.dumps(record).encode())])
    with pytest.raises(FailedPrecondition, match=f"fingerprint {ours.sealer()}"):
        Rotation(store, root_provider(tmp_path / "other.key")).prepare(wait=0)
    Rotation(store, ours).prepare(wait=0)
    assert Rotation(store).read()[0].sealed_by == ours.sealer()


def test_a_key_set_sealed_by_a_root_key_is_not_extended_from_a_local_kek_file(
    tmp_path: Path,
) -> None:
    store, _ = sealed_store(tmp_path)
    with pytest.raises(FailedPrecondition, match=r"kek\.json is no root key"):
        Rotation(store, LocalKekProvider(tmp_path)).prepare(wait=0)
    assert not (tmp_path / "kek.json").exists()
