"""The unix socket a server listens on: parsing its endpoint and claiming the path.

A path is claimed only when nothing is there or when what is there is a unix socket nobody
answers on (what a crashed server leaves). Anything else (a regular file, a directory, a
symlink, a socket another live server answers on) is refused and left exactly as it was:
a mistyped `--endpoint` must never delete someone's file.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from cryptvol.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 1.0


def socket_path(endpoint: str) -> Path:
    """`unix:///abs/path` (or a bare absolute path) → the path."""
    if endpoint.startswith("unix://"):
        path = endpoint.removeprefix("unix://")
    elif endpoint.startswith("/"):
        path = endpoint
    else:
        raise InvalidArgument(f"endpoint {endpoint[:128]!r} must be unix:///absolute/path")
    if not path.startswith("/"):
        raise InvalidArgument(f"endpoint {endpoint[:128]!r} must name an absolute path")
    return Path(path)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a socket"


def claim_socket(path: Path) -> None:
    """Make `path` free for a new socket: create its parent, or remove a stale socket.

    Raises InvalidArgument when something other than a socket is there and
    FailedPrecondition when a live server answers on it; nothing is removed then."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(before.st_mode):
        raise InvalidArgument(
            f"the endpoint {path} is {_kind(before.st_mode)}, not a unix socket; refusing to"
            " replace it: name a path that does not exist yet"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(_PROBE_TIMEOUT)
        probe.connect(str(path))
    except ConnectionRefusedError:
        pass  # a socket file nobody listens on: left by a crash
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot tell whether a server still answers on {path}"
            f" ({errno.errorcode.get(exc.errno or 0, 'error')}); stop it or remove the socket"
        ) from None
    else:
        raise FailedPrecondition(f"another server is serving on {path}; stop it first")
    finally:
        probe.close()
    # Remove only the very socket file that was probed, not one swapped in meanwhile.
    now = os.lstat(path)
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        raise FailedPrecondition(f"{path} changed while checking it; try again")
    path.unlink()
    log.info("removed stale socket", extra={"path": str(path)})
