"""I/O errors the kernel reported for block devices, read from /dev/kmsg.

The kernel counts no I/O errors for loop or device-mapper devices anywhere a program can
read; it logs them ("I/O error, dev loop3, sector ...", "critical space allocation error,
dev loop3, sector ..." for a loop write its full backing filesystem refused, "Buffer I/O
error on dev dm-1", "EXT4-fs warning (device dm-1): ... I/O error", "XFS (dm-1): log I/O
error"). This reader follows the log from the moment it is opened (what came before belongs
to devices that may have been others since: names are reused) and remembers the last error
per device name until `forget` says the name now stands for a new device.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Iterable

KMSG = "/dev/kmsg"
_RECORD_BYTES = 8192
_PATTERNS = (
    # The block layer: "<kind> error, dev loop3, sector ..." where kind is "I/O", or
    # "critical space allocation" for a write a full backing filesystem refused. Not
    # "operation not supported": a loop device on tmpfs refuses WRITE_ZEROES, and its
    # callers fall back to writing zeros.
    re.compile(r"(?<!operation not supported )error, dev ([\w.-]+), sector"),
    re.compile(r"Buffer I/O error on dev(?:ice)? ([\w.-]+)"),
    re.compile(r"\(device ([\w.-]+)\):.*I/O error"),
    re.compile(r"XFS \(([\w.-]+)\):.*(?:I/O error|[Ss]hut(?:ting)? down)"),
)


def device_of(message: str) -> str | None:
    """The device a kernel log message reports an I/O error for, or None."""
    for pattern in _PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


class KernelLog:
    def __init__(self, path: str = KMSG) -> None:
        self._lock = threading.Lock()
        self._errors: dict[str, tuple[int, str]] = {}  # device name: (count, last message)
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = None  # no kernel log here (a container without it): nothing to tell

    @property
    def available(self) -> bool:
        return self._fd is not None

    def errors(self, devices: Iterable[str]) -> str | None:
        """What the kernel reported of I/O errors on any of `devices` (names such as
        "loop3", "dm-1") since they were last forgotten, or None."""
        with self._lock:
            self._drain()
            found = [(name, *self._errors[name]) for name in devices if name in self._errors]
        if not found:
            return None
        return "; ".join(f"{count} kernel I/O error(s) on {name}, last: {message}"
                         for name, count, message in found)

    def forget(self, devices: Iterable[str]) -> None:
        """The names now stand for new devices: what was logged for them is not theirs."""
        with self._lock:
            self._drain()
            for name in devices:
                self._errors.pop(name, None)

    def _drain(self) -> None:
        if self._fd is None:
            return
        while True:
            try:
                record = os.read(self._fd, _RECORD_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    continue
                return
            if not record:
                return
            _, _, text = record.decode(errors="replace").partition(";")
            message = text.split("\n", 1)[0]
            name = device_of(message)
            if name is not None:
                count, _ = self._errors.get(name, (0, ""))
                self._errors[name] = (count + 1, message[:200])

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
