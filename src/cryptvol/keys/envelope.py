"""The envelope of a wrapped data key: AES-256-GCM under a KEK, bound to its volume.

Serialized as compact JSON: `{"v":1,"kek":"<kek id>","nonce":"<b64>","ct":"<b64>"}`. The
volume id is the associated data, so an envelope copied to another volume's record does not
unwrap. The envelope names its KEK so that rotation can find what to re-wrap.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.kek import Kek
from cryptvol.system.secret import Secret

VERSION = 1
NONCE_BYTES = 12


@dataclass(frozen=True)
class Envelope:
    kek_id: str
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": VERSION,
                "kek": self.kek_id,
                "nonce": base64.b64encode(self.nonce).decode(),
                "ct": base64.b64encode(self.ciphertext).decode(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, what: str) -> Envelope:
        """Parse an envelope; `what` names its owner in the error (e.g. "volume pvc-1")."""
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            version = doc.get("v")
            if version != VERSION:
                raise FailedPrecondition(
                    f"the wrapped key of {what} has envelope version {version!r}; this cryptvol"
                    f" reads version {VERSION}: run a cryptvol that knows it"
                )
            env = cls(
                kek_id=str(doc["kek"]),
                nonce=base64.b64decode(doc["nonce"], validate=True),
                ciphertext=base64.b64decode(doc["ct"], validate=True),
            )
        except FailedPrecondition:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise FailedPrecondition(
                f"the wrapped key of {what} is not a readable envelope; the record is damaged"
            ) from None
        if len(env.nonce) != NONCE_BYTES:
            raise FailedPrecondition(f"the wrapped key of {what} has a malformed nonce")
        return env


def peek_kek_id(raw: bytes, *, what: str) -> str:
    """The KEK id an envelope names, without unwrapping it."""
    return Envelope.from_bytes(raw, what=what).kek_id


def wrap(kek: Kek, dek: Secret, volume_id: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    ct = AESGCM(kek.key.reveal()).encrypt(nonce, dek.reveal(), volume_id.encode())
    return Envelope(kek.id, nonce, ct).to_bytes()


def unwrap(raw: bytes, volume_id: str, find_kek: Callable[[str], Kek]) -> Secret:
    """Unwrap the DEK of `volume_id`; `find_kek` maps a KEK id to the loaded KEK or raises."""
    what = f"volume {volume_id}"
    env = Envelope.from_bytes(raw, what=what)
    kek = find_kek(env.kek_id)
    try:
        return Secret(
            AESGCM(kek.key.reveal()).decrypt(env.nonce, env.ciphertext, volume_id.encode())
        )
    except InvalidTag:
        raise FailedPrecondition(
            f"the wrapped key of {what} does not unwrap with KEK {env.kek_id}: the record was"
            " altered, copied from another volume, or the KEK material is not the one it was"
            " wrapped with"
        ) from None
