"""Key-encryption keys (KEKs), and the interface of whatever holds their material.

A KEK wraps data keys (DEKs). Which KEKs exist, which one wraps new DEKs and the rotation
stage are recorded in the state store (the key-set record, see `keyset`); the material of
each KEK is held by a `KekProvider`. The record keeps, per KEK, an opaque reference that the
provider handed out when it made the key: for the local file provider that reference is the
file's name, for the root-key provider it is the KEK sealed under the root key, and a KMS
provider would keep its KMS-wrapped blob there. So a KMIP or cloud KMS provider is one more
class with `create`, `open`, `discard` and `restore`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cryptvol.errors import InvalidArgument
from cryptvol.system.secret import Secret

KEK_BYTES = 32
_FINGERPRINT_LABEL = b"cryptvol kek fingerprint v1"


@dataclass(frozen=True)
class Kek:
    id: str
    key: Secret
    created: float
    # The cipher, made once: reencrypt wraps and unwraps 100,000 keys with one KEK.
    aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEK_BYTES:
            raise InvalidArgument(f"KEK {self.id} must be {KEK_BYTES} bytes")
        object.__setattr__(self, "aead", AESGCM(self.key.reveal()))

    @property
    def fingerprint(self) -> str:
        """A one-way tag of the material: equal keys agree, and it reveals nothing of them."""
        return kek_fingerprint(self.key)


def kek_fingerprint(key: Secret) -> str:
    return hmac.new(key.reveal(), _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32]


def new_kek_id(now: float | None = None) -> str:
    """A KEK id that sorts by creation time and does not collide between replicas."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"kek-{stamp}-{secrets.token_hex(4)}"


def new_kek_material() -> Secret:
    return Secret(os.urandom(KEK_BYTES))


class KekProvider(Protocol):
    """Holds KEK material. Raises `FailedPrecondition` when material that the key-set record
    names is missing or corrupt (restoring it is an operator's job, never a silent new key)
    and `Unavailable` when the place that holds it cannot be reached right now."""

    @property
    def name(self) -> str:
        """What the provider is, for status and error messages (never a secret)."""
        ...

    def create(self, kek_id: str) -> tuple[Kek, str]:
        """Make and keep new material for `kek_id`; return it and the reference to record."""
        ...

    def open(self, kek_id: str, ref: str, created: float) -> Kek:
        """The KEK that `create` made for `kek_id`, found through its recorded `ref`."""
        ...

    def discard(self, kek_id: str) -> None:
        """Forget the material of a retired KEK (idempotent)."""
        ...

    def sealer(self) -> str:
        """The fingerprint of the key that seals the KEKs this provider makes (a root key),
        or '' when none does. Raises like `open` when that key cannot be read."""
        ...

    def sealer_of(self, ref: str) -> str:
        """The fingerprint of the key that sealed the KEK behind a recorded `ref` ('' when
        it names none, or is another provider's)."""
        ...

    def held(self) -> int:
        """How many KEKs this provider already keeps on its own (0 where it keeps none: a
        root key seals KEKs that live in the key-set record). A store with no key set over
        a provider holding KEKs was emptied or swapped. Raises like `open` when its
        material cannot be read."""
        ...

    def restore(self, kek: Kek) -> str:
        """Keep material from a backup (`cryptvol keys import`); return its new reference."""
        ...
