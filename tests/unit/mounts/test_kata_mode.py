"""The kata publish mode's own rules, on plain folders: what it writes for a publication, one
target per volume, and hostile targets refused. (Real dm-crypt, a guest-style mount of the
named device and the shim are in tests/node/csi/test_kata_direct.py.)"""

import json
import os

import pytest

from cryptvol.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from cryptvol.mounts.direct_volumes import DirectVolumes, encode
from cryptvol.mounts.kata import KataDirect
from cryptvol.mounts.kata_shim import ShimClient
from cryptvol.mounts.modes import OpenedVolume, PublishOptions
from cryptvol.mounts.paths import KUBELET, PathGuard

VOLUME = OpenedVolume("cv-1", "/dev/mapper/cryptvol-00000000000000a1", "ext4")
OTHER = OpenedVolume("cv-2", "/dev/mapper/cryptvol-00000000000000b2", "ext4")


@pytest.fixture
def kata(tmp_path):
    return KataDirect(DirectVolumes(tmp_path / "direct-volumes"),
                      ShimClient(tmp_path / "sbs", tmp_path / "kata"))


@pytest.fixture
def at(tmp_path):
    """A path as the engine hands it to a mode: checked, inside the test's kubelet dir."""
    guard = PathGuard({KUBELET: tmp_path})
    return lambda path, field="target_path": guard.check(str(path), field)


@pytest.fixture
def staging(at, tmp_path):
    return at(tmp_path / "staging", "staging_target_path")


@pytest.fixture
def pod_dir(tmp_path):
    path = tmp_path / "pods" / "uid-1" / "volumes" / "kubernetes.io~csi" / "pvc-1"
    path.mkdir(parents=True)
    return path


def _written(kata, target):
    return json.loads((kata.volumes.folder(str(target)) / "mountInfo.json").read_text())


def test_publish_writes_the_mapping_fsgroup_and_flags_and_makes_an_empty_target(
    kata, at, staging, pod_dir
):
    target = pod_dir / "mount"
    options = PublishOptions(("noatime",), "2000", "OnRootMismatch")
    kata.publish(VOLUME, staging, at(target), False, options)
    assert _written(kata, target) == {
        "volume-type": "block", "device": VOLUME.device, "fstype": "ext4",
        "metadata": {"fsGroup": "2000", "fsGroupChangePolicy": "OnRootMismatch"},
        "options": ["noatime"],
    }
    assert target.is_dir() and os.listdir(target) == []
    assert kata.volumes.folder(str(target)).name == encode(str(target))
    kata.publish(VOLUME, staging, at(target), False, options)  # a retry
    assert kata.unpublish(VOLUME, at(target))
    assert not target.exists() and not kata.volumes.folder(str(target)).exists()
    assert not kata.unpublish(VOLUME, at(target))


def test_read_only_is_the_ro_option_and_gid_0_is_left_out(kata, at, staging, pod_dir):
    kata.publish(VOLUME, staging, at(pod_dir / "mount"), True, PublishOptions(mount_group="0"))
    written = _written(kata, pod_dir / "mount")
    assert written["options"] == ["ro"]
    assert "metadata" not in written


def test_one_pod_at_a_time_and_one_set_of_options(kata, at, staging, pod_dir, tmp_path):
    kata.publish(VOLUME, staging, at(pod_dir / "mount"), False)
    second = tmp_path / "pods" / "uid-2"
    second.mkdir()
    with pytest.raises(FailedPrecondition, match="one pod at a time"):
        kata.publish(VOLUME, staging, at(second / "mount"), False)
    assert not (second / "mount").exists()
    with pytest.raises(AlreadyExists, match="other options"):
        kata.publish(VOLUME, staging, at(pod_dir / "mount"), True)
    with pytest.raises(FailedPrecondition, match="cannot also be published on the host"):
        kata.refuse_if_direct(VOLUME)


def test_another_volumes_direct_target_is_neither_taken_nor_removed(kata, at, staging, pod_dir):
    kata.publish(OTHER, staging, at(pod_dir / "mount"), False)
    with pytest.raises(FailedPrecondition, match="not of volume cv-1"):
        kata.publish(VOLUME, staging, at(pod_dir / "mount"), False)
    with pytest.raises(FailedPrecondition, match="not of this volume"):
        kata.unpublish(VOLUME, at(pod_dir / "mount"))
    assert _written(kata, pod_dir / "mount")["device"] == OTHER.device


@pytest.mark.parametrize("shape", ["symlinked parent", "symlink", "regular file",
                                   "non-empty", "dotdot", "relative"])
def test_hostile_targets_are_refused_and_nothing_is_written(kata, at, staging, pod_dir, tmp_path,
                                                            shape):
    """The path checks (mounts.paths) refuse what no mode may act on; the mode refuses a
    target that is not the empty folder kubelet hands it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = pod_dir / "mount"
    error: type[Exception] = InvalidArgument
    if shape == "symlinked parent":
        (tmp_path / "pods" / "uid-9").symlink_to(elsewhere)
        target = tmp_path / "pods" / "uid-9" / "mount"
    elif shape == "symlink":
        target.symlink_to(elsewhere)
    elif shape == "regular file":
        target.write_text("")
        error = FailedPrecondition
    elif shape == "non-empty":
        target.mkdir()
        (target / "x").write_text("")
        error = FailedPrecondition
    elif shape == "dotdot":
        target = pod_dir / ".." / "pvc-1" / "mount"
    else:
        target = "pods/mount"
    with pytest.raises(error):
        kata.publish(VOLUME, staging, at(target), False)
    assert os.listdir(elsewhere) == []
    assert kata.volumes.published(VOLUME.device) == []


def test_a_failed_write_leaves_no_target_behind(kata, at, staging, pod_dir, tmp_path):
    real = tmp_path / "real-root"
    real.mkdir()
    kata.volumes.root.symlink_to(real)
    with pytest.raises(FailedPrecondition, match="not a plain directory"):
        kata.publish(VOLUME, staging, at(pod_dir / "mount"), False)
    assert not (pod_dir / "mount").exists()
