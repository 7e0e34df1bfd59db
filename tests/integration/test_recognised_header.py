"""system.devices.recognised_header: what a device's first bytes show, checked against the
real formatting tools and blkid on image files (no device-mapper needed)."""

import subprocess
from pathlib import Path

import pytest

from cryptvol.system.devices import recognised_header, signatures

MIB = 1024 * 1024


def image(tmp_path: Path, mib: int) -> Path:
    path = tmp_path / "image"
    with path.open("wb") as f:
        f.truncate(mib * MIB)
    return path


@pytest.mark.parametrize(("argv", "mib", "expected"), [
    (["mkfs.ext4", "-q", "-F"], 16, "ext4"),
    (["mkfs.xfs", "-q", "-f"], 320, "xfs"),
    (["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
      "--pbkdf-force-iterations", "1000", "--key-file=-"], 32, "luks2"),
    # Same magics, other formats: left to blkid and cryptsetup.
    (["mkfs.ext2", "-q", "-F"], 16, None),
    (["mkfs.ext3", "-q", "-F"], 16, None),
    (["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode", "--pbkdf-force-iterations",
      "1000", "--key-file=-"], 32, None),
])
def test_a_header_is_recognised_only_as_what_blkid_calls_it(tmp_path, argv, mib, expected):
    device = image(tmp_path, mib)
    subprocess.run([*argv, str(device)], input=b"not-a-real-key", check=True,
                   capture_output=True)
    found = recognised_header(str(device))
    assert found == expected
    if expected is not None:
        assert signatures(str(device)) == ["crypto_LUKS" if expected == "luks2" else expected]


def test_blank_short_and_missing_devices_show_nothing(tmp_path):
    assert recognised_header(str(image(tmp_path, 1))) is None
    short = tmp_path / "short"
    short.write_bytes(b"XFS")
    assert recognised_header(str(short)) is None
    assert recognised_header(str(tmp_path / "absent")) is None
