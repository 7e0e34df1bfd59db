"""The one place that maps cryptvol's errors to gRPC status codes, and back (for clients)."""

from __future__ import annotations

import grpc

from cryptvol import errors

_CODES: tuple[tuple[type[errors.CryptvolError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
)


def code_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED  # an RPC of the spec this driver does not serve
    return grpc.StatusCode.INTERNAL


def message_for(exc: BaseException) -> str:
    """The text a caller sees. Errors cryptvol raised on purpose say what went wrong; for
    anything else only its type is shown, since its text was never reviewed for secrets."""
    if isinstance(exc, errors.CryptvolError):
        return str(exc)
    if isinstance(exc, NotImplementedError):
        return "this driver does not implement this RPC"
    return f"internal error ({type(exc).__name__}); see the driver's log"


def error_for(code: grpc.StatusCode, details: str) -> errors.CryptvolError:
    """The error a driver's answer stands for: the same table, read the other way."""
    for kind, mapped in _CODES:
        if mapped == code:
            return kind(details)
    return errors.Internal(f"{code.name}: {details}")
