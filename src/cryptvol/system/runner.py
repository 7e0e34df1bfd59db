"""Run external commands: bounded in time, secrets only through pipes, errors without input.

Every command cryptvol starts goes through `run`. Key material reaches a command in one of
two ways only: on its stdin (`secret=`), or through an inherited pipe that the argv names
as `/proc/self/fd/N` (`SecretFd` placeholders with `fd_secrets=`). Never argv, never
environment. (`/proc/self/fd`, not `/dev/fd`: a /dev without udev or systemd, as in a
minimal container or the test VM, has no `/dev/fd` link.)

When `CRYPTVOL_EXEC_AUDIT` names a file, the argv and environment of every command started
are appended to it as JSON lines, so tests can prove what the driver's children saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptvol.errors import Internal

AUDIT_ENV = "CRYPTVOL_EXEC_AUDIT"
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_TAIL = 800
_audit_lock = threading.Lock()


@dataclass(frozen=True)
class SecretFd:
    """An argv placeholder that becomes `/proc/self/fd/N` for the named entry of
    `fd_secrets`."""

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
            f"/proc/self/fd/{fd_for[a.name]}" if isinstance(a, SecretFd) else a for a in argv
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
    if check and result.returncode != 0:
        raise CommandError(result.argv, result.returncode, result.stderr)
    return result


def run_pipeline(
    producer: Sequence[str], consumer: Sequence[str], *, timeout: float = 120.0
) -> CommandResult:
    """Run `producer | consumer` (a stream from one command into another, such as
    `zfs send | zfs recv`) and return the consumer's result.

    Raises `CommandError` when either fails, naming the consumer first: when it refuses a
    stream, its message says why, and the producer only saw its pipe close.
    """
    env = command_env()
    _audit(producer, env)
    _audit(consumer, env)
    started = time.monotonic()
    # The producer's stderr goes to a file: a pipe nobody reads while we wait on the
    # consumer could fill and stall it.
    with tempfile.TemporaryFile() as producer_err:
        read_end, write_end = os.pipe()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen(list(producer), stdin=subprocess.DEVNULL,
                                          stdout=write_end, stderr=producer_err, env=env))
            procs.append(subprocess.Popen(list(consumer), stdin=read_end,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=env))
        except FileNotFoundError as exc:
            for proc in procs:
                proc.kill()
                proc.wait()
            raise CommandError([str(exc.filename or "?")], 127,
                               f"{exc.filename}: command not found") from None
        finally:
            # Only the children hold the pipe now, so each sees the other's end close.
            os.close(read_end)
            os.close(write_end)
        first, second = procs
        try:
            out, err = second.communicate(timeout=timeout)
            first.wait(timeout=max(0.1, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for proc in procs:
                proc.kill()
                proc.wait()
            raise CommandError(consumer, -1, "", timed_out=True) from None
        producer_err.seek(0)
        first_err = producer_err.read().decode(errors="replace")
    if second.returncode != 0:
        raise CommandError(consumer, second.returncode, err.decode(errors="replace"))
    if first.returncode != 0:
        raise CommandError(producer, first.returncode, first_err)
    return CommandResult(argv=tuple(consumer), returncode=0, stdout=out.decode(errors="replace"),
                         stderr=err.decode(errors="replace"),
                         seconds=time.monotonic() - started)


def _audit(argv: Sequence[str], env: Mapping[str, str]) -> None:
    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    line = json.dumps({"argv": list(argv), "env": dict(env)}) + "\n"
    with _audit_lock, open(path, "a", encoding="utf-8") as f:
        f.write(line)
