"""What is mounted where, read from /proc/self/mountinfo."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    target: str
    source: str
    fs_type: str
    options: tuple[str, ...]
    root: str
    # The device number of the mounted filesystem (mountinfo's major:minor): what tells
    # whose mount this is. A source is only a name, and names are not unique.
    dev: int = 0

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    found = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        found.append(
            Mount(
                target=_unescape(fields[4]),
                source=_unescape(tail[1]),
                fs_type=tail[0],
                options=tuple(fields[5].split(",")),
                root=_unescape(fields[3]),
                dev=_device_number(fields[2]),
            )
        )
    return found


def _device_number(field: str) -> int:
    major, _, minor = field.partition(":")
    try:
        return os.makedev(int(major), int(minor))
    except ValueError:
        return 0


def mounts_at(target: str) -> list[Mount]:
    """The mounts at `target`, bottom first (the last is the one a lookup sees)."""
    real = os.path.realpath(target)
    return [m for m in mounts() if m.target == real]


def mount_at(target: str) -> Mount | None:
    """The topmost mount at `target`, or None."""
    found = mounts_at(target)
    return found[-1] if found else None
