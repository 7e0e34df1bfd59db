"""Claiming a server's socket path: only an absent path or a stale socket is taken; anything
else is refused with a clear error and left exactly as it was (issue 10)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.rpc.endpoint import claim_socket, socket_path


def test_an_absent_path_is_claimed_and_its_parent_made(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.sock"
    claim_socket(path)
    assert path.parent.is_dir() and not path.exists()


def test_a_stale_socket_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays and nobody listens: what a SIGKILL leaves behind
    claim_socket(path)
    assert not os.path.lexists(path)


def test_a_live_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        with pytest.raises(FailedPrecondition, match="another server is serving"):
            claim_socket(path)
        assert path.is_socket()


def _regular(path: Path) -> None:
    path.write_text("precious")


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("precious")


def _symlink_to_file(path: Path) -> None:
    target = path.with_name("target")
    target.write_text("precious")
    path.symlink_to(target)


def _dangling_symlink(path: Path) -> None:
    path.symlink_to(path.with_name("nowhere"))


def _symlink_to_stale_socket(path: Path) -> None:
    target = path.with_name("real.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(target))
    s.close()
    path.symlink_to(target)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_regular, "a regular file"),
        (_directory, "a directory"),
        (_symlink_to_file, "a symlink"),
        (_dangling_symlink, "a symlink"),
        (_symlink_to_stale_socket, "a symlink"),
    ],
)
def test_anything_but_a_socket_is_refused_and_nothing_is_deleted(
    tmp_path: Path, make, kind: str
) -> None:
    path = tmp_path / "x.sock"
    make(path)
    before = sorted((p.name, p.is_symlink()) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidArgument, match=f"is {kind}, not a unix socket"):
        claim_socket(path)
    assert sorted((p.name, p.is_symlink()) for p in tmp_path.rglob("*")) == before
    if make is _regular:
        assert path.read_text() == "precious"


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:1", "unix://relative/x.sock", "x.sock", ""])
def test_an_endpoint_that_is_not_an_absolute_unix_path_is_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument):
        socket_path(endpoint)
