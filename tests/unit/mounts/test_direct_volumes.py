"""Kata's direct-volume folders: names, JSON, modes, atomic writes, and only our own removed.

Names and JSON are checked the way Kata reads them: Go's base64.URLEncoding (padded URL
alphabet; the values below are from Kata's own tests) and its MountInfo field names.
"""

import base64
import json
import os
import stat

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.mounts.direct_volumes import MOUNT_INFO, DirectVolumes, MountInfo, decode, encode

DEVICE = "/dev/mapper/cryptvol-0123456789abcdef"
TARGET = "/var/lib/kubelet/pods/7e1/volumes/kubernetes.io~csi/pvc-1/mount"


@pytest.fixture
def volumes(tmp_path):
    return DirectVolumes(tmp_path / "direct-volumes")


def test_the_folder_name_is_gos_padded_url_base64_of_the_path():
    assert encode("abcdddd") == "YWJjZGRkZA=="
    assert encode("../../etc/passwd") == "Li4vLi4vZXRjL3Bhc3N3ZA=="
    name = encode(TARGET)
    assert "/" not in name
    assert decode(name) == TARGET
    assert base64.urlsafe_b64decode(name).decode() == TARGET


def test_the_json_has_kata_field_names_and_leaves_empty_ones_out():
    bare = json.loads(MountInfo(DEVICE, "ext4").to_json())
    assert bare == {"volume-type": "block", "device": DEVICE, "fstype": "ext4"}
    full = json.loads(MountInfo(DEVICE, "xfs", {"fsGroup": "2000"}, ("ro",)).to_json())
    assert full["metadata"] == {"fsGroup": "2000"}
    assert full["options"] == ["ro"]


def test_a_write_makes_a_0700_folder_and_a_0600_file_and_leaves_no_temp(volumes):
    info = MountInfo(DEVICE, "ext4", {"fsGroup": "2000"})
    volumes.write(TARGET, info)
    folder = volumes.folder(TARGET)
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(folder / MOUNT_INFO).st_mode) == 0o600
    assert os.listdir(folder) == [MOUNT_INFO]
    assert MountInfo.from_json((folder / MOUNT_INFO).read_bytes()) == info
    assert volumes.published(DEVICE) == [TARGET]
    assert volumes.published("/dev/mapper/other") == []


def test_a_temp_file_left_by_a_crash_is_replaced_and_never_seen_as_a_sandbox(volumes):
    volumes.write(TARGET, MountInfo(DEVICE, "ext4"))
    (volumes.folder(TARGET) / ".mountInfo.json.cryptvol-tmp").write_text("half")
    entry = volumes.entry(TARGET)
    assert entry.sandbox_ids == () and entry.others == ()
    volumes.write(TARGET, MountInfo(DEVICE, "ext4", options=("ro",)))
    assert os.listdir(volumes.folder(TARGET)) == [MOUNT_INFO]


def test_the_sandbox_file_kata_writes_is_read_and_removed_with_the_folder(volumes):
    volumes.write(TARGET, MountInfo(DEVICE, "ext4"))
    sandbox = "a" * 64
    (volumes.folder(TARGET) / sandbox).write_bytes(b"")
    assert volumes.entry(TARGET).sandbox_ids == (sandbox,)
    assert volumes.remove(TARGET, DEVICE)
    assert not volumes.folder(TARGET).exists()
    assert not volumes.remove(TARGET, DEVICE)


def test_another_devices_folder_or_a_stranger_file_is_left_alone(volumes):
    volumes.write(TARGET, MountInfo("/dev/mapper/someone-else", "ext4"))
    with pytest.raises(FailedPrecondition, match="not of this volume"):
        volumes.remove(TARGET, DEVICE)
    volumes.write(TARGET, MountInfo(DEVICE, "ext4"))
    (volumes.folder(TARGET) / "notes.txt").write_text("not Kata's, not ours")
    with pytest.raises(FailedPrecondition, match=r"notes\.txt"):
        volumes.remove(TARGET, DEVICE)
    assert (volumes.folder(TARGET) / MOUNT_INFO).exists()


def test_symlinks_are_refused_not_followed(volumes, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    volumes.root.mkdir()
    volumes.folder(TARGET).symlink_to(elsewhere)
    with pytest.raises(FailedPrecondition, match="symlink"):
        volumes.write(TARGET, MountInfo(DEVICE, "ext4"))
    assert os.listdir(elsewhere) == []
    volumes.folder(TARGET).unlink()
    volumes.folder(TARGET).mkdir()
    (volumes.folder(TARGET) / MOUNT_INFO).symlink_to(elsewhere / "x.json")
    with pytest.raises(FailedPrecondition, match="symlink"):
        volumes.entry(TARGET)


def test_a_symlinked_root_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "root").symlink_to(real)
    with pytest.raises(FailedPrecondition, match="not a plain directory"):
        DirectVolumes(tmp_path / "root").write(TARGET, MountInfo(DEVICE, "ext4"))


def test_a_path_too_long_for_a_folder_name_is_invalid(volumes):
    with pytest.raises(InvalidArgument, match="too long"):
        volumes.write("/" + "x" * 200, MountInfo(DEVICE, "ext4"))
