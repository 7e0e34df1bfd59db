"""Start long-running processes (a VM, a server) with the same rules as `runner.run`.

`run` waits for its command; some children must live while the caller does other work, so
they are started here instead. They get the same small environment and the same exec audit
as `run`, and each starts in a process group of its own, so `stop` ends it and everything
it spawned, with no survivors left to a broad kill. A secret reaches such a child on its
stdin only, as with `run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO

from cryptvol.system.runner import CommandError, _audit, command_env

_Stream = int | IO[bytes] | None


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: _Stream = subprocess.DEVNULL,
    stdout: _Stream = None,
    stderr: _Stream = None,
    secret: bytes | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new process group and return it; the caller must `stop` it.

    `secret` is written to the child's stdin, which is then closed. `die_with_parent` has
    the kernel kill the child when the thread that started it ends (`setpriv --pdeathsig`):
    for work that must not outlive a driver killed mid-way, as it would not outlive its
    container either; the calling thread must then wait for the child."""
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    full_env = command_env(env)
    _audit(argv, full_env)
    try:
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.PIPE if secret is not None else stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
    if secret is not None and proc.stdin is not None:
        try:
            proc.stdin.write(secret)
        except BrokenPipeError:
            pass  # the child exited at once; its exit status says why
        finally:
            proc.stdin.close()
    return proc


def stop(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> int:
    """End `proc`'s whole process group: SIGTERM, then SIGKILL after `grace` seconds.

    Returns the process's exit status. Safe to call on a process that already exited.
    """
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while children it forked still hold the group.
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
