"""Run external commands: bounded in time, secrets only through pipes, errors without input.

Every command cryptvol starts goes through `run`. Key material reaches a command in one of
two ways only: on its stdin (`secret=`), or through an inherited pipe that the argv names
as `/dev/fd/N` (`SecretFd` placeholders with `fd_secrets=`). Never argv, never environment.

When `CRYPTVOL_EXEC_AUDIT` names a file, the argv and environment of every command started
are appended to it as JSON lines, so tests can prove what the driver's children saw.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptvol.errors import Internal

log = logging.getLogger(__name__)
AUDIT_ENV = "CRYPTVOL_EXEC_AUDIT"
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_TAIL = 800
_audit_lock = threading.Lock()


@dataclass(frozen=True)
class SecretFd:
    """An argv placeholder that becomes `/dev/fd/N` for the named entry of `fd_secrets`."""

    name: str


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = field(default=0.0, compare=False)


class CommandError(Internal):
    """A command failed or timed out. Carries its name, exit code and stderr, never its input."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, timed_out: bool = False):
        self.command = os.path.basename(argv[0]) if argv else "?"
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()[-_STDERR_TAIL:]
        self.timed_out = timed_out
        if timed_out:
            what = f"{self.command} timed out"
        else:
            what = f"{self.command} exited with code {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(what + detail)


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, predictable environment: C locale, a fixed PATH (a test may prepend to it)."""
    path = os.environ.get("CRYPTVOL_PATH_PREFIX", "")
    env = {"PATH": f"{path}:{_SAFE_PATH}" if path else _SAFE_PATH, "LC_ALL": "C"}
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | SecretFd],
    *,
    secret: bytes | None = None,
    fd_secrets: Mapping[str, bytes] | None = None,
    stdin_text: str | None = None,
    timeout: float = 120.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run `argv` and return its result; raise `CommandError` on failure when `check`."""
    if secret is not None and stdin_text is not None:
        raise ValueError("a command gets either a secret or text on stdin, not both")
    pipes: list[tuple[int, int]] = []
    fd_for: dict[str, int] = {}
    try:
        for name, payload in (fd_secrets or {}).items():
            r, w = os.pipe()
            pipes.append((r, w))
            fd_for[name] = r
            if len(payload) > 65536:
                raise ValueError("a secret passed through a pipe must fit the pipe buffer")
            os.write(w, payload)
            os.close(w)
        resolved = tuple(
            f"/dev/fd/{fd_for[a.name]}" if isinstance(a, SecretFd) else a for a in argv
        )
        full_env = command_env(env)
        _audit(resolved, full_env)
        stdin_bytes = secret if secret is not None else (
            stdin_text.encode() if stdin_text is not None else None
        )
        started = time.monotonic()
        try:
            proc = subprocess.run(
                resolved,
                input=stdin_bytes,
                stdin=None if stdin_bytes is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                env=full_env,
                cwd=cwd,
                pass_fds=tuple(fd_for.values()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise CommandError(resolved, -1, err, timed_out=True) from None
        except FileNotFoundError:
            raise CommandError(resolved, 127, f"{resolved[0]}: command not found") from None
        result = CommandResult(
            argv=resolved,
            returncode=proc.returncode,
            stdout=proc.stdout.decode(errors="replace"),
            stderr=proc.stderr.decode(errors="replace"),
            seconds=time.monotonic() - started,
        )
    finally:
        for r, w in pipes:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)
    # The command's name only: where an RPC's time goes (bench/bench_node.py reads these).
    log.debug("command", extra={"command": os.path.basename(result.argv[0]),
                                "returncode": result.returncode,
                                "duration_ms": round(result.seconds * 1000, 1)})
    if check and result.returncode != 0:
        raise CommandError(result.argv, result.returncode, result.stderr)
    return result


def _audit(argv: Sequence[str], env: Mapping[str, str]) -> None:
    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    line = json.dumps({"argv": list(argv), "env": dict(env)}) + "\n"
    with _audit_lock, open(path, "a", encoding="utf-8") as f:
        f.write(line)
