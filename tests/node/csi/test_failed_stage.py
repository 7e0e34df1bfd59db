"""A NodeStageVolume that fails undoes what it did: no loop device, no mapping left, so
DeleteVolume works after it. And a device is formatted only when proven blank.

Seen before: each of these stages returned its code but left the loop device (sometimes
the mapping) attached, and DeleteVolume then failed "still staged"."""

import os
import subprocess
from pathlib import Path

import grpc

from cryptvol.luks.cryptsetup import mapping_name
from support.co import MIB, create_volume

PASSPHRASE = "correct horse battery staple 8d1f"
# pbkdf2 at a low iteration time: the emulated CPU of the test VM formats in a second.
CHEAP_PASSPHRASE = {"keySource": "secret", "pbkdf": "pbkdf2", "iterTime": "10"}


def attached(backing: Path) -> list[str]:
    real = os.path.realpath(backing)
    return [p.parent.parent.name for p in Path("/sys/block").glob("loop*/loop/backing_file")
            if p.read_text().strip() == real]


def failed_stage(vol, driver, secrets=None, stranger=False) -> grpc.StatusCode:
    """Stage `vol`, which must fail; check it left nothing (a stranger's mount at the
    staging path is still there, untouched); return its code."""
    request = vol.stage_request()
    if secrets is not None:
        request.secrets.clear()
        request.secrets.update(secrets)
    vol.staging.mkdir(exist_ok=True)
    try:
        vol.csi.node.NodeStageVolume(request)
    except grpc.RpcError as exc:
        code = exc.code()
    else:
        raise AssertionError("the stage should have failed")
    backing = driver.pool_dir / f"{vol.volume_id}.img"
    assert attached(backing) == [], "the failed stage left its loop device"
    assert not Path(f"/dev/mapper/{mapping_name(vol.volume_id)}").exists()
    assert os.path.ismount(vol.staging) == stranger
    return code


def test_failed_stages_undo_what_they_did_and_the_volumes_can_be_deleted(csi, driver,
                                                                         tmp_path):
    FP, INVALID = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT
    pool = driver.pool_dir

    # A file holding data only in its middle (first and last MiB zero) is not blank.
    middle = create_volume(csi, tmp_path, "fail-middle", "ext4")
    with open(pool / f"{middle.volume_id}.img", "r+b") as f:
        f.seek(40 * MIB)
        f.write(os.urandom(4096))
    assert failed_stage(middle, driver) == FP

    # ext4 written straight onto the backing file: no LUKS, never reformatted.
    plain = create_volume(csi, tmp_path, "fail-plain", "ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", str(pool / f"{plain.volume_id}.img")], check=True)
    assert failed_stage(plain, driver) == FP

    # The staging path already holds a stranger's mount.
    busy = create_volume(csi, tmp_path, "fail-busy", "ext4")
    busy.staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "stranger", str(busy.staging)], check=True)
    try:
        assert failed_stage(busy, driver, stranger=True) == FP
    finally:
        subprocess.run(["umount", str(busy.staging)], check=True)

    # A passphrase volume, formatted once, then: a wrong passphrase; its file truncated
    # inside the LUKS2 keyslot area; its header destroyed.
    secret = create_volume(csi, tmp_path, "fail-secret", "ext4", parameters=CHEAP_PASSPHRASE,
                           secrets={"passphrase": PASSPHRASE})
    secret.stage()
    secret.unstage()
    assert failed_stage(secret, driver, {"passphrase": "wrong"}) == INVALID
    backing = pool / f"{secret.volume_id}.img"
    size = backing.stat().st_size
    os.truncate(backing, 8 * MIB)
    assert failed_stage(secret, driver) != grpc.StatusCode.OK
    os.truncate(backing, size)
    with open(backing, "r+b") as f:
        f.write(os.urandom(64 * 1024))
    assert failed_stage(secret, driver) == FP

    for vol in (middle, plain, busy, secret):
        vol.delete()
        assert not (pool / f"{vol.volume_id}.img").exists()
