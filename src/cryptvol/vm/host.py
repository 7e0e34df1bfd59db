"""Can this host run dm-crypt itself, or do node workloads need the VM?"""

from __future__ import annotations

import os
from pathlib import Path


def dm_crypt_available() -> bool:
    """True where the running kernel has (or can load) device-mapper, and has loop devices.

    A /dev/mapper/control node alone proves nothing: dmsetup creates it on a kernel without
    device-mapper. The kernel's own list of misc devices, or a loadable module, does.
    """
    misc = _proc_misc()
    has_dm = "device-mapper" in misc or _module_file_exists("kernel/drivers/md/dm-mod.ko")
    has_loop = "loop-control" in misc or _module_file_exists("kernel/drivers/block/loop.ko")
    return has_dm and has_loop


def _proc_misc() -> set[str]:
    try:
        lines = Path("/proc/misc").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in lines if line.split()}


def _module_file_exists(relative: str) -> bool:
    base = Path("/lib/modules") / os.uname().release / relative
    return any(base.with_name(base.name + ext).exists() for ext in ("", ".xz", ".zst", ".gz"))
