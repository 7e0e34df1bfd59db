"""The one error hierarchy every layer raises.

Each class names the CSI outcome it stands for; `cryptvol.rpc.status` maps them to gRPC
codes in one place. Messages are shown to users and to the container orchestrator, so they
say what was wrong and what to do, and never carry key material. Whatever a message quotes
of a request goes through `quoted`, which bounds it.
"""


class CryptvolError(Exception):
    """Base of every error cryptvol raises on purpose."""


class InvalidArgument(CryptvolError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""


class NotFound(CryptvolError):
    """The volume, snapshot or path the request names does not exist."""


class AlreadyExists(CryptvolError):
    """A name is taken by an object made with other parameters."""


class FailedPrecondition(CryptvolError):
    """The request is valid, but the system is not in a state where it can be served."""


class OutOfRange(CryptvolError):
    """A size is outside what the volume or the pool supports."""


class ResourceExhausted(CryptvolError):
    """The pool or a node-wide budget is full."""


class Aborted(CryptvolError):
    """Another operation on the same object is in flight; the caller should retry."""


class Unavailable(CryptvolError):
    """A dependency (state store, key provider) cannot be reached right now."""


class PermissionDenied(CryptvolError):
    """This process may not use a path it needs: it belongs to another user, or its mode
    keeps this process out."""


class Internal(CryptvolError):
    """Something that should work did not; the message says what, without secrets."""


QUOTE_LIMIT = 128


def quoted(value: object) -> str:
    """`value` as an error message may quote it: in quotes, and at most QUOTE_LIMIT characters
    of it. Request fields can be megabytes long; a message that quoted one whole would be
    larger than the gRPC status carries, and the caller would see the wrong code."""
    text = str(value)
    if len(text) <= QUOTE_LIMIT:
        return repr(text)
    return f"{text[:QUOTE_LIMIT]!r}... ({len(text)} characters)"
