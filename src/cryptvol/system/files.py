"""Small private files (markers, key files), written whole or not at all, and durable file
replacement: what a rename needs to survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600: written to a temporary file beside it, synced,
    renamed over it and the directory synced, so a crash leaves the old content or the new,
    never a part. Neither name is followed if it is a symlink."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_marker_file(path: Path) -> str | None:
    """The text of a one-line marker file, or None when there is none (a symlink in its
    place is not followed: it raises)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        return f.read().strip() or None


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries, so a file just renamed or linked into it stays there."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
