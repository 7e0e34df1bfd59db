"""Look for key material where it must never be: the driver's log, the gRPC errors it gave,
the argv and environment of every command it started (its exec audit)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

from support.driver import RunningDriver


def forms(secret: bytes) -> list[bytes]:
    """The ways a key could be written out: raw, hex, base64."""
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def leaks(driver: RunningDriver, secrets: Iterable[bytes], messages: Iterable[str] = ()
          ) -> list[str]:
    """Which of `secrets` (by index and form) appear in the driver's output or `messages`."""
    haystack = "\n".join([*driver.log_lines(), *messages]).encode()
    haystack += json.dumps(driver.audit()).encode()
    return [f"secret {i} as {form[:6]!r}..." for i, secret in enumerate(secrets)
            for form in forms(secret) if form in haystack]
