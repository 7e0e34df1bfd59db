"""Which device a kernel log line reports an I/O error for."""

from __future__ import annotations

import pytest

from cryptvol.system.kernel_log import KernelLog, device_of


@pytest.mark.parametrize(("line", "device"), [
    ("I/O error, dev loop3, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2",
     "loop3"),
    ("blk_update_request: I/O error, dev loop0, sector 10 op 0x0:(READ)", "loop0"),
    ("critical space allocation error, dev loop1, sector 4096 op 0x1:(WRITE) flags 0x0",
     "loop1"),
    ("Buffer I/O error on dev dm-1, logical block 12, lost async page write", "dm-1"),
    ("EXT4-fs warning (device dm-2): ext4_end_bio:343: I/O error 10 writing to inode 12",
     "dm-2"),
    ("XFS (dm-4): log I/O error -5", "dm-4"),
    ("XFS (dm-4): Filesystem has been shut down due to log error (0x2).", "dm-4"),
    ("EXT4-fs (dm-2): mounted filesystem with ordered data mode", None),
    ("loop3: detected capacity change from 0 to 2048", None),
    ("operation not supported error, dev loop0, sector 18432 op 0x9:(WRITE_ZEROES) flags "
     "0x8000800 phys_seg 0 prio class 2", None),
])
def test_io_errors_are_attributed_to_their_device(line: str, device: str | None) -> None:
    assert device_of(line) == device


def test_without_a_kernel_log_nothing_is_reported(tmp_path) -> None:
    log = KernelLog(str(tmp_path / "no-kmsg"))
    assert not log.available
    assert log.errors(["loop0"]) is None
    log.close()
