"""NodeGetVolumeStats tells the truth: a suspended mapping, a filesystem that recorded
errors or shut down, and a device the kernel reported I/O errors for are abnormal, each
with a message. (What the controller knows is tested on the host: test_capacity.py.)

Seen before: a pool filled up, mkfs and writes got I/O errors, and stats still said
healthy."""

import contextlib
import os
import subprocess

from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.luks.cryptsetup import mapping_name
from cryptvol.system.devices import kernel_name
from support.co import MIB, create_volume
from support.pools import TINY


def condition(vol) -> pb.VolumeCondition:
    return vol.csi.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=str(vol.target))).volume_condition


def test_a_suspended_mapping_and_a_filesystem_with_errors_are_abnormal(csi, tmp_path):
    vol = create_volume(csi, tmp_path, "health-ext4", "ext4")
    vol.stage()
    vol.publish()
    assert not condition(vol).abnormal
    mapping = mapping_name(vol.volume_id)
    subprocess.run(["dmsetup", "suspend", mapping], check=True)
    try:
        found = condition(vol)
        assert found.abnormal and "suspended" in found.message
    finally:
        subprocess.run(["dmsetup", "resume", mapping], check=True)
    assert not condition(vol).abnormal
    name = kernel_name(f"/dev/mapper/{mapping}")
    with open(f"/sys/fs/ext4/{name}/trigger_fs_error", "w") as f:
        f.write("cryptvol test")
    found = condition(vol)
    assert found.abnormal and "ext4 has recorded" in found.message
    vol.release()


def test_an_xfs_that_shut_down_is_abnormal(csi, tmp_path):
    vol = create_volume(csi, tmp_path, "health-xfs", "xfs")
    vol.stage()
    vol.publish()
    assert not condition(vol).abnormal
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(vol.target)], check=True)
    found = condition(vol)
    assert found.abnormal and "I/O error" in found.message
    vol.release()


def test_a_full_pool_makes_writes_fail_and_stats_say_so(csi, driver, tmp_path):
    """The session driver over-commits (ratio 4): the tiny pool promises more than it
    holds, and a filler file takes the rest, as another tenant of the filesystem would."""
    vol = create_volume(csi, tmp_path, "health-full", "ext4", size=48 * MIB,
                        parameters={"pool": TINY})
    vol.stage()
    vol.publish()
    assert not condition(vol).abnormal
    filler = driver.tiny_pool_dir / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    try:
        # EIO or ENOSPC at write or fsync: what a full pool does.
        with contextlib.suppress(OSError):
            vol.write(size=40 * MIB)
        os.sync()
        found = condition(vol)
        assert found.abnormal, found.message
        # The kernel log names the loop device or the mapping (stats read it first).
        assert "kernel I/O error(s) on" in found.message, found.message
    finally:
        filler.unlink()
    vol.release()
    vol.delete()
