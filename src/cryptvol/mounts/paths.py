"""Paths a node request names, made safe to act on.

A request's staging, target or volume path is accepted only when it is absolute, has no
`.` or `..` component, has no symbolic link in any component below its allowed root, and
lies inside that root (kubelet's dir by default). Staging over a symlink that leads to the
state dir would otherwise hide the database and the KEK file under a mount; unpublishing
`../../etc` would remove what is there.

Every check walks the path component by component from the root with O_NOFOLLOW, and the
operations here (make, remove, look at) act through the directory fd that walk ends on, so
a component swapped for a symlink between check and act is not followed either. The root
itself is configuration (e.g. `/var/lib/kubelet` may be a symlink to a data disk) and is
resolved once.

More than one root can be allowed, each under a name: request paths live under `kubelet`;
a publish mode that writes its own files elsewhere (Kata's `mountInfo.json` under
`/run/kata-containers/shared/direct-volumes`) works below its own root, resolved here once,
and opens every name below it without following a symlink (`mounts.direct_volumes`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptvol.errors import InvalidArgument, NotFound, quoted

KUBELET = "kubelet"
# Kata's direct-volume dir: the kata publish mode writes each target's mountInfo.json there.
KATA_DIRECT = "kata-direct-volumes"
DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet")
PATH_MAX = 4096
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class NodePath:
    """A request path that passed the checks: `path` as given (normalised), `root` the
    resolved allowed root it lies in, `parts` its components below that root."""

    path: str
    root: str
    parts: tuple[str, ...]
    field: str

    @property
    def name(self) -> str:
        return self.parts[-1]

    def __str__(self) -> str:
        return self.path

    @property
    def real(self) -> str:
        """The path with the root resolved: what /proc/self/mountinfo shows for it."""
        return os.path.join(self.root, *self.parts)

    @contextmanager
    def parent_fd(self) -> Iterator[int]:
        """An O_PATH fd of the parent directory, reached without following any symlink.
        Linux takes O_PATH fds as the dir_fd of the *at calls used here."""
        fd = _walk(self.root, self.parts[:-1], self)
        try:
            yield fd
        finally:
            os.close(fd)

    def lstat(self) -> os.stat_result | None:
        """The path's own status (a symlink is not followed), or None when it is absent."""
        with self.parent_fd() as parent:
            try:
                return os.stat(self.name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def exists(self) -> bool:
        """Whether anything is at the path. A mount whose filesystem answers errors to a
        stat (an xfs that shut down answers EIO) is there too."""
        try:
            return self.lstat() is not None
        except OSError as exc:
            return exc.errno not in (errno.ENOENT, errno.ENOTDIR)

    def make_dir(self, mode: int = 0o750) -> bool:
        """Make the directory unless it exists; return whether this call made it.
        NotADirectoryError when something else is there."""
        with self.parent_fd() as parent:
            try:
                os.mkdir(self.name, mode, dir_fd=parent)
                return True
            except FileExistsError:
                self._expect(parent, stat.S_ISDIR, NotADirectoryError(
                    errno.ENOTDIR, "not a directory", self.path))
                return False

    def make_file(self, mode: int = 0o600) -> bool:
        """Make an empty regular file unless one exists; return whether this call made it.
        IsADirectoryError when something else is there."""
        with self.parent_fd() as parent:
            try:
                fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, mode, dir_fd=parent)
            except FileExistsError:
                self._expect(parent, stat.S_ISREG, IsADirectoryError(
                    errno.EISDIR, "not a regular file", self.path))
                return False
            os.close(fd)
            return True

    def _expect(self, parent: int, kind: Callable[[int], bool], otherwise: OSError) -> None:
        found = os.stat(self.name, dir_fd=parent, follow_symlinks=False)
        if not kind(found.st_mode):
            raise otherwise

    def remove_dir(self) -> None:
        """Remove the (empty) directory; an absent one is already removed."""
        with self.parent_fd() as parent, suppress(FileNotFoundError):
            os.rmdir(self.name, dir_fd=parent)

    def remove_file(self) -> None:
        """Remove the regular file (never what a symlink names); an absent one is removed."""
        with self.parent_fd() as parent:
            found = _lstat_at(parent, self.name)
            if found is None:
                return
            if not stat.S_ISREG(found.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", self.path)
            os.unlink(self.name, dir_fd=parent)

    def is_empty_dir(self) -> bool:
        with self.parent_fd() as parent:
            try:
                fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=parent)
            except OSError:
                return False
            try:
                return not os.listdir(fd)
            finally:
                os.close(fd)


class PathGuard:
    """The allowed roots of this node, by name, and the checks against them."""

    def __init__(self, roots: Mapping[str, Path]) -> None:
        # A root that does not exist yet (no kubelet on a test host) is kept as given;
        # nothing can be inside it until it exists.
        self.roots = {name: os.path.realpath(root) for name, root in roots.items()}
        self._given = {name: os.path.normpath(str(root)) for name, root in roots.items()}

    def root(self, name: str) -> Path:
        """Root `name`, resolved: what the checks compare paths with."""
        return Path(self.roots[name])

    def check(self, path: str, field: str, root: str = KUBELET) -> NodePath:
        """`path` as a NodePath below root `root`. InvalidArgument when it is relative, has
        a `.` or `..` component, NUL bytes, a symlink in a component, or lies outside the
        root; NotFound when its parent directory does not exist."""
        shown = quoted(path)
        if not path.startswith("/"):
            raise InvalidArgument(f"{field} {shown} must be an absolute path")
        if "\x00" in path or len(path.encode()) > PATH_MAX:
            raise InvalidArgument(f"{field} {shown} is not a usable path")
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise InvalidArgument(f"{field} {shown} must not have '.' or '..' components")
        below = self._below(parts, root)
        if not below:
            raise InvalidArgument(
                f"{field} {shown} is outside {self._given[root]}, where this driver acts "
                f"on {root} paths"
            )
        node_path = NodePath("/" + "/".join(parts), self.roots[root], tuple(below), field)
        with node_path.parent_fd() as parent:
            try:
                found = _lstat_at(parent, node_path.name)
            except OSError:
                # Only a mountpoint's filesystem can answer a stat with an error (an xfs
                # that shut down answers EIO); a symlink's own status never reaches one.
                found = None
        if found is not None and stat.S_ISLNK(found.st_mode):
            raise InvalidArgument(f"{field} {shown} is a symbolic link; it is not followed")
        return node_path

    def inside(self, path: str, root: str = KUBELET) -> bool:
        """Whether `path` (as /proc/self/mountinfo shows it) lies strictly inside root
        `root`: mounts elsewhere are propagated copies the node does not act on."""
        return bool(self._below([p for p in path.split("/") if p], root))

    def _below(self, parts: list[str], root: str) -> list[str]:
        """The components of `parts` below root `root` (as given or resolved); [] when the
        path is not strictly inside it."""
        for base in (self._given[root], self.roots[root]):
            base_parts = [p for p in base.split("/") if p]
            if len(parts) > len(base_parts) and parts[: len(base_parts)] == base_parts:
                return parts[len(base_parts):]
        return []


def _walk(root: str, parts: tuple[str, ...], node_path: NodePath) -> int:
    """An O_PATH fd of root/parts, refusing any component that is a symlink."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = root
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(
                    f"{node_path.field} {quoted(node_path.path)}: its parent directory "
                    f"{quoted(os.path.join(walked, part))} does not exist"
                ) from None
            except OSError as exc:
                found = _lstat_at(fd, part)
                if found is not None and stat.S_ISLNK(found.st_mode):
                    raise InvalidArgument(
                        f"{node_path.field} {quoted(node_path.path)} passes through the "
                        f"symbolic link {quoted(os.path.join(walked, part))}; it is not followed"
                    ) from None
                raise InvalidArgument(
                    f"{node_path.field} {quoted(node_path.path)}: "
                    f"{quoted(os.path.join(walked, part))} is not a directory ({exc.strerror})"
                ) from None
            os.close(fd)
            fd = next_fd
            walked = os.path.join(walked, part)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
