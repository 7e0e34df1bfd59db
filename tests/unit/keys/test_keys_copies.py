"""Key copies (a snapshot's, a clone's first key) and the replacement of one volume's DEK:
each copy is wrapped for its owner, survives its source's changes and KEK rotation, and a
replacement keeps both keys until it is put in place in one step."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, NotFound
from cryptvol.keys import envelope
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.keyset import dek_key
from cryptvol.keys.manager import KeyManager, open_local
from cryptvol.keys.rotation import Rotation
from cryptvol.store.sqlite import SqliteStore

Setup = tuple[SqliteStore, KeyManager]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return open_local(tmp_path)


def test_a_copy_is_the_source_key_wrapped_for_its_owner(setup: Setup) -> None:
    store, km = setup
    dek = km.create_dek("cv-1")
    km.copy_dek("cv-1", "cs-1")
    assert km.get_dek("cs-1") == dek
    blob = store.get(dek_key("cs-1")).value  # type: ignore[union-attr]
    assert blob != store.get(dek_key("cv-1")).value  # type: ignore[union-attr]
    # Moved under another id, a copy does not unwrap: its owner is the associated data.
    with pytest.raises(FailedPrecondition):
        envelope.unwrap(blob, "cv-1", km.loaded.find)


def test_a_copy_outlives_changes_to_its_source(setup: Setup) -> None:
    _, km = setup
    dek = km.create_dek("cv-1")
    km.copy_dek("cv-1", "cs-1")
    replacement = km.next_dek("cv-1")
    km.promote_next_dek("cv-1")
    assert km.get_dek("cv-1") == replacement
    km.copy_dek("cv-1", "cs-1")  # a repeat keeps the copy made first
    assert km.get_dek("cs-1") == dek
    km.delete_dek("cv-1")
    assert km.get_dek("cs-1") == dek
    with pytest.raises(NotFound):
        km.copy_dek("cv-1", "cs-2")


def test_a_replacement_is_kept_beside_the_key_until_it_is_put_in_place(setup: Setup) -> None:
    _, km = setup
    old = km.create_dek("cv-1")
    assert km.pending_dek("cv-1") is None
    new = km.next_dek("cv-1")
    assert km.next_dek("cv-1") == new  # asked again after a crash: the same one
    assert km.pending_dek("cv-1") == new
    assert km.get_dek("cv-1") == old
    km.promote_next_dek("cv-1")
    km.promote_next_dek("cv-1")
    assert km.get_dek("cv-1") == new
    assert km.pending_dek("cv-1") is None
    km.next_dek("cv-1")
    km.delete_dek("cv-1")
    assert km.pending_dek("cv-1") is None


def test_kek_rotation_rewraps_copies_and_replacements(setup: Setup, tmp_path: Path) -> None:
    store, km = setup
    dek = km.create_dek("cv-1")
    km.copy_dek("cv-1", "cs-1")
    replacement = km.next_dek("cv-1")
    rot = Rotation(store, LocalKekProvider(tmp_path))
    old = rot.read()[0].current.id
    rot.prepare(wait=0)
    rot.rotate(wait=0)
    assert rot.reencrypt(wait=0).finished
    assert rot.read()[0].is_retired(old)
    km.reload()
    assert km.get_dek("cs-1") == dek
    assert km.pending_dek("cv-1") == replacement
