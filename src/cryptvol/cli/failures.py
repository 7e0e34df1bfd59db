"""How a `cryptvol` command ends: the exit-code table, and the one place that turns an error
into one line on stderr and its exit code.

Commands raise what they raise (cryptvol's errors, OS errors, gRPC errors); `CryptvolGroup`,
the class of the root `cryptvol` group, catches them once for every command. Nothing else in
the CLI catches an error only to print it.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from cryptvol import errors

if TYPE_CHECKING:
    from cryptvol.csi.client import CsiClient

OK = 0
FAILED = 1
USAGE = 2  # click's own code for a bad option or argument
UNAVAILABLE = 3
PERMISSION_DENIED = 4

# `cryptvol --help` shows this table; README.md's copy is checked against it by a test.
EXIT_CODES: dict[int, str] = {
    OK: "success",
    FAILED: "failed or refused; the message says why (doctor: a check failed)",
    USAGE: "usage: unknown option, bad value, wrong config file",
    UNAVAILABLE: "unavailable: no driver answers, the state store is unreachable; retry later",
    PERMISSION_DENIED: "permission denied on a path (state, pool, socket, file)",
}
TRACEBACK_ENV = "CRYPTVOL_TRACEBACK"


def exit_codes_help() -> str:
    rows = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    # \b keeps click from rewrapping the table.
    return f"\b\nExit codes:\n{rows}\n  vm run: its command's code; 125 when the VM failed"


class ConfigError(errors.InvalidArgument):
    """The settings (config file, environment, flags) are wrong: a usage error, exit 2."""


class CommandFailed(click.ClickException):
    """An error explained in one line, ending the command with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click declares exit_code per class; an instance's own is what it reads.
        self.exit_code = exit_code  # type: ignore[misc]


def explain(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line a user sees for an error a command raised."""
    grpc = sys.modules.get("grpc")  # never imported for this: unloaded, it raised nothing
    if grpc is not None and isinstance(exc, grpc.RpcError):
        exc = _from_rpc(exc, endpoint=None)
    if isinstance(exc, ConfigError):
        return USAGE, str(exc)
    if isinstance(exc, errors.Unavailable):
        return UNAVAILABLE, str(exc)
    if isinstance(exc, errors.PermissionDenied):
        return PERMISSION_DENIED, str(exc)
    if isinstance(exc, errors.CryptvolError):
        return FAILED, str(exc)
    if isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)
    ):
        where = exc.filename or "a path it needs"
        return PERMISSION_DENIED, (
            f"permission denied on {where}: run as root, or as a user allowed to use it"
        )
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return FAILED, f"{(exc.strerror or type(exc).__name__).lower()}{where}"
    # A bug: its text was never reviewed for secrets, so only its type is shown.
    return FAILED, (
        f"internal error ({type(exc).__name__}); this is a bug in cryptvol: rerun with "
        f"{TRACEBACK_ENV}=1 to see where it happened"
    )


class CryptvolGroup(click.Group):
    """The root group: every subcommand's error ends as one line and an exit code, and
    every option that reads an environment variable names it in its help."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        _show_envvars(cmd)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            code, message = explain(exc)
            raise CommandFailed(message, code) from None


def _show_envvars(cmd: click.Command) -> None:
    for param in cmd.params:
        if isinstance(param, click.Option):
            param.show_envvar = True
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _show_envvars(sub)


@contextmanager
def driver_at(endpoint: str) -> Iterator[CsiClient]:
    """A client of the driver at `endpoint`; a gRPC error becomes cryptvol's, naming it."""
    import grpc

    from cryptvol.csi.client import CsiClient

    with CsiClient(endpoint) as client:
        try:
            yield client
        except grpc.RpcError as exc:
            raise _from_rpc(exc, endpoint) from None


def _from_rpc(exc: Any, endpoint: str | None) -> Exception:
    import grpc

    from cryptvol.rpc.status import error_for

    code, details = exc.code(), exc.details() or ""
    where = endpoint or "the endpoint"
    if code == grpc.StatusCode.UNAVAILABLE and "Permission denied" in details:
        path = endpoint.removeprefix("unix://") if endpoint else None
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details:
        return errors.Unavailable(
            f"no driver answers on {where}: is `cryptvol serve` running there? "
            "(--endpoint or CRYPTVOL_ENDPOINT names it)"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"the driver on {where} did not answer in time")
    return error_for(code, details)
