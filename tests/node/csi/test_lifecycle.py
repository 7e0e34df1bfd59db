"""The whole life of a volume on real dm-crypt: create, stage, publish, write, restage,
verify, expand online, delete — for ext4, xfs and raw block."""

import os
import subprocess

import pytest

from support.co import MIB, create_volume


@pytest.mark.parametrize("kind", ["ext4", "xfs", "block"])
def test_a_volume_lives_its_whole_life_and_keeps_its_data(csi, driver, tmp_path, kind):
    vol = create_volume(csi, tmp_path, f"life-{kind}", kind)
    vol.stage()
    vol.publish()
    digest = vol.write(seed=b"MARKER-" + kind.encode())
    vol.cycle(digest)

    backing = driver.pool_dir / f"{vol.volume_id}.img"
    assert b"MARKER-" + kind.encode() not in backing.read_bytes()

    before = vol.size_seen()
    new_size = 512 * MIB if kind == "xfs" else 128 * MIB
    reported = vol.expand(new_size)
    assert reported >= new_size
    assert vol.size_seen() > before
    assert vol.checksum() == digest

    vol.release()
    vol.delete()
    assert not backing.exists()


def test_a_read_only_publish_refuses_writes(csi, tmp_path):
    vol = create_volume(csi, tmp_path, "ro", "ext4")
    vol.stage()
    vol.publish(readonly=True)
    with pytest.raises(OSError):
        (vol.target / "x").write_text("no")
    vol.release()


def test_the_luks_header_uses_managed_pbkdf2_at_minimum_cost(csi, driver, tmp_path):
    vol = create_volume(csi, tmp_path, "hdr", "ext4")
    vol.stage()
    dump = subprocess.run(
        ["cryptsetup", "luksDump", str(driver.pool_dir / f"{vol.volume_id}.img")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "aes-xts-plain64" in dump
    assert "pbkdf2" in dump
    assert "512 bits" in dump
    assert "Iterations: 1000" in dump
    vol.unstage()


def test_stats_report_usage_and_an_abnormal_condition_when_the_mount_is_gone(csi, tmp_path):
    from cryptvol.csi.gen import csi_pb2 as pb

    vol = create_volume(csi, tmp_path, "stats", "ext4")
    vol.stage()
    vol.publish()
    vol.write()
    stats = csi.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(vol.target))
    )
    units = {u.unit: u for u in stats.usage}
    assert units[pb.VolumeUsage.BYTES].used >= 2 * MIB
    assert units[pb.VolumeUsage.INODES].total > 0
    assert not stats.volume_condition.abnormal
    subprocess.run(["umount", str(vol.target)], check=True)
    stats = csi.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(vol.target))
    )
    assert stats.volume_condition.abnormal
    vol.release()


def test_a_device_holding_data_is_never_formatted(csi, driver, tmp_path):
    vol = create_volume(csi, tmp_path, "foreign", "ext4")
    backing = driver.pool_dir / f"{vol.volume_id}.img"
    with open(backing, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(4096))
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        vol.stage()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown kind" in info.value.details()
    vol.unstage()
