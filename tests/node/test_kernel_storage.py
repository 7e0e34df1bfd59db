"""The kernel's storage stack works as cryptvol needs it, through the real tools.

These are the proofs that the node environment (the test VM on hosts without
device-mapper) is real: LUKS2 on loop devices carrying ext4 and xfs, and an LVM thin pool
without udev whose thin snapshot of an encrypted volume opens and reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cryptvol.system import run
from cryptvol.system.runner import CommandError

MIB = 1024 * 1024
TEST_KEY = b"node-test-passphrase"
# Enough for the slowest step here (mkfs.xfs, LVM activation under TCG).
SLOW = 300.0
# Cheap key stretching: these keys are throwaway, and TCG is slow.
FAST_PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


def luks_format(device: str) -> None:
    run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            *FAST_PBKDF,
            "--key-file=-",
            device,
        ],
        secret=TEST_KEY,
        timeout=SLOW,
    )


def luks_open(device: str, name: str) -> str:
    run(
        ["cryptsetup", "open", "--type", "luks2", "--key-file=-", device, name],
        secret=TEST_KEY,
        timeout=SLOW,
    )
    return f"/dev/mapper/{name}"


def luks_close(name: str) -> None:
    run(["cryptsetup", "close", name], timeout=SLOW)


def make_fs(kind: str, device: str) -> None:
    if kind == "ext4":
        run(["mkfs.ext4", "-q", "-F", device], timeout=SLOW)
    else:
        run(["mkfs.xfs", "-q", "-f", device], timeout=SLOW)


def write_marked_file(folder: Path, marker: bytes) -> str:
    """Write 2 MiB that start with `marker`; return their sha256."""
    payload = marker + os.urandom(2 * MIB - len(marker))
    with open(folder / "data.bin", "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(payload).hexdigest()


def read_back(folder: Path) -> str:
    return hashlib.sha256((folder / "data.bin").read_bytes()).hexdigest()


def raw_contains(device: str, needle: bytes) -> bool:
    with open(device, "rb") as f:
        while block := f.read(8 * MIB):
            if needle in block:
                return True
    return False


@pytest.mark.parametrize("kind", ["ext4", "xfs"])
def test_luks2_on_a_loop_device_keeps_a_filesystem_and_hides_its_data(
    loop_device: str,
    mapper_names: Callable[[str], str],
    mount_point: Path,
    kind: str,
) -> None:
    marker = f"PLAINTEXT-MARKER-{kind}-{uuid.uuid4().hex}".encode()
    luks_format(loop_device)
    name = mapper_names(kind)
    clear = luks_open(loop_device, name)
    make_fs(kind, clear)
    run(["mount", clear, str(mount_point)], timeout=SLOW)
    digest = write_marked_file(mount_point, marker)
    run(["umount", str(mount_point)], timeout=SLOW)
    luks_close(name)
    assert not Path(clear).exists()

    assert not raw_contains(loop_device, marker), "the data reached the disk in clear"

    clear = luks_open(loop_device, name)
    run(["mount", clear, str(mount_point)], timeout=SLOW)
    assert read_back(mount_point) == digest
    run(["umount", str(mount_point)], timeout=SLOW)
    luks_close(name)


def test_a_wrong_key_does_not_open_a_luks2_volume(
    loop_device: str, mapper_names: Callable[[str], str]
) -> None:
    luks_format(loop_device)
    name = mapper_names("wrong")
    with pytest.raises(CommandError) as failed:
        run(
            ["cryptsetup", "open", "--type", "luks2", "--key-file=-", loop_device, name],
            secret=b"not the key",
            timeout=SLOW,
        )
    assert failed.value.returncode == 2  # cryptsetup: no key available with this passphrase
    assert not Path(f"/dev/mapper/{name}").exists()


def test_an_lvm_thin_snapshot_of_a_luks2_volume_opens_and_reads_back(
    make_loop_device: Callable[[int], str],
    mapper_names: Callable[[str], str],
    mount_point: Path,
) -> None:
    pv = make_loop_device(1024 * MIB)
    vg = f"cvt{uuid.uuid4().hex[:8]}"
    name, snap_name = mapper_names("origin"), mapper_names("snap")
    try:
        run(["pvcreate", "-q", pv], timeout=SLOW)
        run(["vgcreate", "-q", vg, pv], timeout=SLOW)
        run(["lvcreate", "-q", "--type", "thin-pool", "-L", "512M", "-n", "pool", vg], timeout=SLOW)
        run(["lvcreate", "-q", "-V", "256M", "-T", f"{vg}/pool", "-n", "vol"], timeout=SLOW)
        origin = f"/dev/{vg}/vol"
        assert Path(origin).exists(), "LVM made no device node without udev"

        luks_format(origin)
        clear = luks_open(origin, name)
        make_fs("ext4", clear)
        run(["mount", clear, str(mount_point)], timeout=SLOW)
        digest = write_marked_file(mount_point, b"THIN-ORIGIN")
        run(["umount", str(mount_point)], timeout=SLOW)
        luks_close(name)

        run(["lvcreate", "-q", "-s", f"{vg}/vol", "-n", "snap"], timeout=SLOW)
        # Thin snapshots are made with the activation-skip flag; -K overrides it.
        run(["lvchange", "-ay", "-K", f"{vg}/snap"], timeout=SLOW)
        snap = luks_open(f"/dev/{vg}/snap", snap_name)
        run(["mount", "-o", "ro", snap, str(mount_point)], timeout=SLOW)
        assert read_back(mount_point) == digest
        run(["umount", str(mount_point)], timeout=SLOW)
        luks_close(snap_name)

        lvs = run(["lvs", "--noheadings", "-o", "lv_name,pool_lv,origin", vg], timeout=SLOW)
        rows = {tuple(line.split()) for line in lvs.stdout.splitlines() if line.strip()}
        assert ("snap", "pool", "vol") in rows
    finally:
        with contextlib.suppress(CommandError):
            if os.path.ismount(mount_point):
                run(["umount", str(mount_point)], timeout=SLOW)
        # The volume group goes only once nothing holds its volumes open.
        for mapped in (name, snap_name):
            if Path(f"/dev/mapper/{mapped}").exists():
                with contextlib.suppress(CommandError):
                    luks_close(mapped)
        with contextlib.suppress(CommandError):
            run(["vgremove", "-q", "-f", vg], timeout=SLOW)
        with contextlib.suppress(CommandError):
            run(["pvremove", "-q", "-f", pv], timeout=SLOW)
