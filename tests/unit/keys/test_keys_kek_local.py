"""The local KEK provider: a 0600 file, made once, never silently replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.kek_local import LocalKekProvider


def test_create_writes_a_0600_file_that_opens_the_same_key(tmp_path: Path) -> None:
    provider = LocalKekProvider(tmp_path)
    kek, ref = provider.create("kek-1")
    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600
    again = LocalKekProvider(tmp_path).open("kek-1", ref, kek.created)
    assert again.key == kek.key and again.fingerprint == kek.fingerprint


def test_a_second_kek_joins_the_first_and_discard_removes_only_it(tmp_path: Path) -> None:
    provider = LocalKekProvider(tmp_path)
    first, ref = provider.create("kek-1")
    provider.create("kek-2")
    provider.discard("kek-2")
    provider.discard("kek-2")
    assert set(provider.load_all()) == {"kek-1"}
    assert provider.open("kek-1", ref, 0).key == first.key


def test_a_missing_file_is_an_error_naming_the_file_and_the_kek(tmp_path: Path) -> None:
    provider = LocalKekProvider(tmp_path)
    _, ref = provider.create("kek-1")
    provider.path.unlink()
    with pytest.raises(FailedPrecondition, match=r"kek\.json is missing.*KEK kek-1"):
        provider.open("kek-1", ref, 0)
    assert not provider.path.exists()


@pytest.mark.parametrize(
    "content", [b"", b"{", b'{"v":1,"keks":{"kek-1":{"key":"AAAA","created":0}}}', b"[]"]
)
def test_a_corrupt_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    provider = LocalKekProvider(tmp_path)
    _, ref = provider.create("kek-1")
    provider.path.write_bytes(content)
    with pytest.raises(FailedPrecondition, match="is corrupt"):
        provider.open("kek-1", ref, 0)
    assert provider.path.read_bytes() == content


def test_a_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    provider = LocalKekProvider(tmp_path)
    _, ref = provider.create("kek-1")
    os.chmod(provider.path, 0o644)
    with pytest.raises(FailedPrecondition, match="mode 0644; it must be 0600"):
        provider.open("kek-1", ref, 0)
