"""Size limits of CSI requests, checked before anything else reads them.

The CSI spec bounds every string field to 128 bytes and every map<string, string> to 4 KiB
unless a field says otherwise. A request beyond them is refused with InvalidArgument that
names the field and its size, never its content: a 1 MiB name quoted in an error would make
the status larger than gRPC carries, and the caller would see RESOURCE_EXHAUSTED instead.

Deviations, each for a reason:
- paths (`staging_target_path`, `target_path`, `volume_path`) may be PATH_MAX long: the
  orchestrator builds them from its own root dir and object names, and kubelet's routinely
  pass 128 bytes;
- `secrets`: each key is bounded and must be alphanumeric, '-', '_' or '.' as the spec asks;
  values are never quoted or logged and kubelet passes a whole Kubernetes Secret, so they
  are left to gRPC's message limit;
- `volume_context` and `publish_context` are the driver's own answers coming back (plus the
  orchestrator's pod information); they are never quoted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cryptvol.errors import InvalidArgument

STRING_BYTES = 128
MAP_BYTES = 4096
PATH_BYTES = 4096
PATH_FIELDS = frozenset({"staging_target_path", "target_path", "volume_path"})
UNBOUNDED_MAPS = frozenset({"volume_context", "publish_context"})
SECRET_KEY = re.compile(r"^[A-Za-z0-9._-]+$")

_T = TypeVar("_T")


def check_request(message: Message, prefix: str = "") -> None:
    """Raise InvalidArgument for the first field of `message` beyond its CSI size limit."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _check_map(field.name, name, value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if field.is_repeated else (value,)):
                check_request(item, f"{name}.")
        elif field.type == FieldDescriptor.TYPE_STRING:
            limit = PATH_BYTES if field.name in PATH_FIELDS else STRING_BYTES
            for item in (value if field.is_repeated else (value,)):
                _check_string(name, item, limit)


def _check_string(name: str, value: str, limit: int) -> None:
    size = len(value.encode())
    if size > limit:
        raise InvalidArgument(f"{name} is {size} bytes; at most {limit} are allowed")


def _check_map(field: str, name: str, value: Any) -> None:
    if field in UNBOUNDED_MAPS:
        return
    if field == "secrets":
        for key in value:
            _check_string(f"a key of {name}", key, STRING_BYTES)
            if not SECRET_KEY.match(key):
                raise InvalidArgument(
                    f"a key of {name} has a character other than letters, digits, '-', '_' "
                    "and '.'"
                )
        return
    for key in value:
        _check_string(f"a key of {name}", key, STRING_BYTES)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
    if size > MAP_BYTES:
        raise InvalidArgument(f"{name} holds {size} bytes; at most {MAP_BYTES} are allowed")


def bounded(servicer: type[_T]) -> type[_T]:
    """Check every request an RPC method of `servicer` receives before the method runs."""
    for attr, method in list(vars(servicer).items()):
        if attr[:1].isupper() and callable(method):
            setattr(servicer, attr, _checked(method))
    return servicer


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: object, request: Message, context: object) -> Any:
        check_request(request)
        return method(self, request, context)

    return call
