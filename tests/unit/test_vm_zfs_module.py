"""How the VM's ZFS part is found and what the guest is told about it, without building."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.vm import zfs_module
from cryptvol.vm.errors import VmUnavailable


def test_the_zfs_version_comes_from_the_dkms_source_folder(tmp_path: Path) -> None:
    assert zfs_module.source_version(tmp_path) is None
    (tmp_path / "zfs-2.1.11").mkdir()
    assert zfs_module.source_version(tmp_path) is None  # no dkms.conf: not a dkms source
    (tmp_path / "zfs-2.1.11" / "dkms.conf").write_text("PACKAGE_NAME=zfs\n")
    (tmp_path / "zfsutils").mkdir()
    assert zfs_module.source_version(tmp_path) == "2.1.11"


def test_the_guest_is_told_where_the_modules_are_or_why_there_are_none(tmp_path: Path) -> None:
    ready = zfs_module.ZfsPart(tmp_path)
    assert zfs_module.guest_env(ready) == {zfs_module.MODULES_ENV: str(tmp_path)}
    broken = zfs_module.ZfsPart(None, "cannot build: headers missing")
    assert zfs_module.guest_env(broken) == {zfs_module.PROBLEM_ENV: "cannot build: headers missing"}


def test_loading_in_a_guest_without_modules_raises_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if Path("/sys/module/zfs").exists():
        pytest.skip("ZFS is loaded on this kernel")
    monkeypatch.delenv(zfs_module.MODULES_ENV, raising=False)
    monkeypatch.setenv(zfs_module.PROBLEM_ENV, "zfs-dkms is not installed on the host")
    with pytest.raises(VmUnavailable, match="zfs-dkms is not installed"):
        zfs_module.load()
