"""A byte string that refuses to show itself in reprs, logs and tracebacks."""

from __future__ import annotations

import hmac


class Secret:
    """Key material. `reveal()` is the one way to its bytes; everything else prints a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray):
            raise TypeError("a Secret holds bytes")
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")
