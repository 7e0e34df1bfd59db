"""Node request paths: only plain absolute paths inside the allowed root, never a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryptvol.errors import InvalidArgument, NotFound
from cryptvol.mounts.paths import KUBELET, PathGuard


@pytest.fixture
def root(tmp_path: Path) -> Path:
    kubelet = tmp_path / "kubelet"
    (kubelet / "pods" / "p1").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    (kubelet / "pods" / "p1" / "file").write_text("data")
    (kubelet / "pods" / "to-state").symlink_to(tmp_path / "state")
    (kubelet / "pods" / "p1" / "last").symlink_to(tmp_path / "state")
    return kubelet


@pytest.fixture
def guard(root: Path) -> PathGuard:
    return PathGuard({KUBELET: root})


@pytest.mark.parametrize(("path", "why"), [
    ("pods/p1/mount", "absolute"),
    ("{root}/pods/../pods/p1/mount", "'..'"),
    ("{root}/pods/./p1/mount", "'..'"),
    ("{root}/pods/to-state/mount", "symbolic link"),
    ("{root}/pods/p1/last", "symbolic link"),
    ("{root}/pods/p1/file/mount", "not a directory"),
    ("{root}", "outside"),
    ("{root}-other/mount", "outside"),
    ("/etc/passwd", "outside"),
    ("{root}/pods/p1/nul\x00", "not a usable path"),
    ("{root}/" + "a" * 5000, "not a usable path"),
])
def test_a_hostile_path_is_refused(guard: PathGuard, root: Path, path: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        guard.check(path.format(root=root), "target_path")
    assert why in str(info.value)
    assert len(str(info.value)) < 512


def test_a_path_whose_parent_is_missing_is_not_found(guard: PathGuard, root: Path) -> None:
    with pytest.raises(NotFound):
        guard.check(f"{root}/pods/p2/mount", "target_path")


def test_a_plain_path_inside_the_root_is_accepted_and_acted_on_there(
        guard: PathGuard, root: Path) -> None:
    target = guard.check(f"{root}//pods/p1/mount/", "target_path")
    assert str(target) == f"{root}/pods/p1/mount"
    assert target.lstat() is None
    assert target.make_dir() and not target.make_dir()
    assert target.is_empty_dir()
    target.remove_dir()
    target.remove_dir()  # an absent one is removed already
    assert target.make_file() and not target.make_file()
    target.remove_file()
    assert not (root / "pods" / "p1" / "mount").exists()


def test_a_component_swapped_for_a_symlink_after_the_check_is_not_followed(
        guard: PathGuard, root: Path, tmp_path: Path) -> None:
    target = guard.check(f"{root}/pods/p1/mount", "target_path")
    os.rename(root / "pods" / "p1", root / "pods" / "moved")
    (root / "pods" / "p1").symlink_to(tmp_path / "state")
    with pytest.raises(InvalidArgument):
        target.make_dir()
    assert list((tmp_path / "state").iterdir()) == []


def test_the_root_itself_may_be_a_symlink_as_configured(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "kubelet-link"
    link.symlink_to(root)
    guard = PathGuard({KUBELET: link})
    assert guard.check(f"{link}/pods/p1/mount", "target_path").real == \
        f"{root}/pods/p1/mount"
    assert guard.check(f"{root}/pods/p1/mount", "target_path").parts == ("pods", "p1", "mount")
    assert guard.inside(f"{root}/pods/p1/mount") and not guard.inside(str(tmp_path / "x"))


def test_a_second_root_is_checked_under_its_own_name(tmp_path: Path, root: Path) -> None:
    kata = tmp_path / "kata"
    kata.mkdir()
    guard = PathGuard({KUBELET: root, "kata": kata})
    assert guard.check(f"{kata}/volume", "mountInfo", root="kata").name == "volume"
    with pytest.raises(InvalidArgument):
        guard.check(f"{kata}/volume", "target_path")
