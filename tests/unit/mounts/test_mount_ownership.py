"""A pod's fsGroup on a host-mounted volume: group, modes and setgid as kubelet applies them;
symlinks never followed."""

import os
import stat

import pytest

from cryptvol.mounts.ownership import ON_ROOT_MISMATCH, apply_fs_group

GID = 4321


@pytest.fixture
def tree(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's group to any gid needs root")
    root = tmp_path / "vol"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file").write_text("x")
    (root / "sub" / "file").chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_text("not the volume's")
    outside.chmod(0o600)
    (root / "link").symlink_to(outside)
    return root, outside


def test_every_entry_gets_the_group_and_group_access(tree):
    root, _ = tree
    apply_fs_group(str(root), GID, read_only=False)
    for path in (root, root / "sub"):
        st = os.stat(path)
        assert st.st_gid == GID
        assert st.st_mode & (stat.S_ISGID | 0o770) == stat.S_ISGID | 0o770
    st = os.stat(root / "sub" / "file")
    assert st.st_gid == GID and stat.S_IMODE(st.st_mode) == 0o660


def test_a_symlink_gets_the_group_and_its_target_is_untouched(tree):
    root, outside = tree
    before = os.stat(outside)
    apply_fs_group(str(root), GID, read_only=False)
    assert os.lstat(root / "link").st_gid == GID
    after = os.stat(outside)
    assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)


def test_on_root_mismatch_skips_a_volume_whose_root_already_matches(tree):
    root, _ = tree
    apply_fs_group(str(root), GID, read_only=False)
    os.chown(root / "sub" / "file", -1, 0)
    apply_fs_group(str(root), GID, read_only=False, policy=ON_ROOT_MISMATCH)
    assert os.stat(root / "sub" / "file").st_gid == 0
    apply_fs_group(str(root), GID, read_only=False)
    assert os.stat(root / "sub" / "file").st_gid == GID
