"""Wraps every RPC: one structured log line, and errors turned into gRPC status codes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from cryptvol.csi.status import code_for, message_for
from cryptvol.errors import QUOTE_LIMIT, CryptvolError

log = logging.getLogger("cryptvol.rpc")
REDACTED = "<redacted>"


def redacted(request: Message) -> Message:
    """A copy of `request` whose `secrets` map values are masked, for debug logging."""
    copy = type(request)()
    copy.CopyFrom(request)
    if any(f.name == "secrets" for f in copy.DESCRIPTOR.fields):
        secrets = copy.secrets  # type: ignore[attr-defined]
        for key in list(secrets):
            secrets[key] = REDACTED
    return copy


def _subject(request: Message) -> str:
    for field in ("volume_id", "name"):
        value = getattr(request, field, "")
        if value:
            return str(value)[:QUOTE_LIMIT]  # a 1 MiB name is refused, not logged whole
    return ""


class RpcInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def call(request: Message, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            code = grpc.StatusCode.OK
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request", extra={"method": method, "request": str(redacted(request))})
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
                log.info("rpc", extra={
                    "method": method,
                    "volume": _subject(request),
                    "code": code.name,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                })

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
