"""How the VM's parts are recognised and prepared, without building them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cryptvol.vm import parts
from cryptvol.vm.modules import without_signature
from cryptvol.vm.parts import _is_static_elf, initramfs_key


def signed(body: bytes, signature: bytes) -> bytes:
    # struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", len(signature))
    return body + signature + info + b"~Module signature appended~\n"


def test_a_module_signature_is_cut_off_exactly() -> None:
    body = b"\x7fELF" + bytes(range(200))
    assert without_signature(signed(body, b"S" * 517)) == body


def test_an_unsigned_module_is_left_alone() -> None:
    body = b"\x7fELF unsigned"
    assert without_signature(body) == body


def test_only_a_statically_linked_executable_counts_as_static() -> None:
    assert not _is_static_elf(Path("/bin/sh"))  # dynamically linked on Debian
    assert not _is_static_elf(Path("/etc/hostname"))
    if Path("/bin/busybox").exists() and Path("/usr/share/doc/busybox-static").exists():
        assert _is_static_elf(Path("/bin/busybox"))


def test_the_initramfs_key_follows_kernel_and_busybox(tmp_path: Path) -> None:
    one, two = tmp_path / "bb1", tmp_path / "bb2"
    one.write_bytes(b"busybox one")
    two.write_bytes(b"busybox two")
    assert initramfs_key("6.1.0-1-amd64", one) == initramfs_key("6.1.0-1-amd64", one)
    assert initramfs_key("6.1.0-1-amd64", one) != initramfs_key("6.1.0-2-amd64", one)
    assert initramfs_key("6.1.0-1-amd64", one) != initramfs_key("6.1.0-1-amd64", two)


def test_the_cache_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(parts.CACHE_ENV, str(tmp_path))
    assert parts.resolve_cache_dir() == tmp_path
    monkeypatch.delenv(parts.CACHE_ENV)
    assert parts.resolve_cache_dir() == parts.DEFAULT_CACHE
    assert parts.resolve_cache_dir("/elsewhere") == Path("/elsewhere")
