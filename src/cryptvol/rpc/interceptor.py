"""Wraps every RPC of a server: one structured log line, and errors turned into gRPC codes.

What differs between servers is passed in: which request fields name the subject of a call
(logged), and which hold secrets (masked when a request is logged at debug level).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cryptvol.errors import QUOTE_LIMIT, CryptvolError
from cryptvol.rpc.metrics import RpcMetrics
from cryptvol.rpc.status import code_for, message_for

log = logging.getLogger("cryptvol.rpc")
REDACTED = "<redacted>"


def redacted(request: Message, secret_fields: Sequence[str]) -> Message:
    """A copy of `request` whose secret fields (or, for maps, their values) are masked."""
    copy = type(request)()
    copy.CopyFrom(request)
    for field in copy.DESCRIPTOR.fields:
        if field.name not in secret_fields:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = getattr(copy, field.name)
            mask = _mask(field.message_type.fields_by_name["value"].type)
            for key in list(values):
                values[key] = mask
        elif getattr(copy, field.name):
            setattr(copy, field.name, _mask(field.type))
    return copy


def _mask(field_type: int) -> str | bytes:
    return REDACTED.encode() if field_type == FieldDescriptor.TYPE_BYTES else REDACTED


class RpcInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """`subjects` maps a log field to the request fields that fill it (the first non-empty
    one wins), e.g. {"volume": ("volume_id", "name")}; `secret_fields` are masked;
    `metrics`, when given, counts every RPC and times it. The successful calls of `quiet`
    methods (a KMS plugin's thousands of Encrypt and Decrypt a second) are logged at debug
    level; their failures, like every other call, at info."""

    def __init__(
        self,
        *,
        subjects: Mapping[str, Sequence[str]],
        secret_fields: Sequence[str],
        metrics: RpcMetrics | None = None,
        quiet: Sequence[str] = (),
    ) -> None:
        self._quiet = frozenset(quiet)
        self._subjects = {k: tuple(v) for k, v in subjects.items()}
        self._secret_fields = tuple(secret_fields)
        self._metrics = metrics
        # gRPC asks for every call; the wrapped handler of a method never changes.
        self._wrapped: dict[str, Any] = {}

    def _subject(self, request: Message) -> dict[str, str]:
        found = {}
        for name, fields in self._subjects.items():
            for field in fields:
                value = getattr(request, field, "")
                if value:
                    # Inputs are not bounded before validation: log at most QUOTE_LIMIT
                    # characters (a 1 MiB name is refused, not logged whole).
                    found[name] = str(value)[:QUOTE_LIMIT]
                    break
            else:
                found[name] = ""
        return found

    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(details.method.rsplit("/", 1)[-1], handler)
        self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        inner = handler.unary_unary
        quiet = method in self._quiet

        def call(request: Message, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            code = grpc.StatusCode.OK
            if log.isEnabledFor(logging.DEBUG):
                shown = redacted(request, self._secret_fields)
                log.debug("request", extra={"method": method, "request": str(shown)})
            try:
                return inner(request, context)
            except CryptvolError as exc:
                code = code_for(exc)
                context.abort(code, message_for(exc))
            except Exception as exc:
                # Servicers never abort themselves: every error they raise lands here once.
                code = code_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("unexpected error", extra={"method": method,
                                                         "error_type": type(exc).__name__})
                context.abort(code, message_for(exc))
            finally:
                seconds = time.monotonic() - started
                if self._metrics is not None:
                    self._metrics.observe(method, code.name, seconds)
                level = logging.DEBUG if quiet and code is grpc.StatusCode.OK else logging.INFO
                if log.isEnabledFor(level):
                    log.log(level, "rpc", extra={
                        "method": method,
                        **self._subject(request),
                        "code": code.name,
                        "duration_ms": round(seconds * 1000, 1),
                    })

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
