"""The envelope of a wrapped data key: AES-256-GCM under a KEK, bound to its volume.

Serialized as compact JSON: `{"v":1,"kek":"<kek id>","nonce":"<b64>","ct":"<b64>"}`. The
volume id is the associated data, so an envelope copied to another volume's record does not
unwrap. The envelope names its KEK so that rotation can find what to re-wrap.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.kek import Kek
from cryptvol.system.secret import Secret

VERSION = 1
NONCE_BYTES = 12
# The exact layout `to_bytes` writes, parsed without json (reencrypt reads 100,000 of these);
# anything else goes through json and its precise errors.
_EXACT = re.compile(
    rb'\{"v":1,"kek":"([A-Za-z0-9._-]+)","nonce":"([A-Za-z0-9+/=]+)","ct":"([A-Za-z0-9+/=]+)"\}'
)


@dataclass(frozen=True)
class Envelope:
    kek_id: str
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        # Built by hand: reencrypt serializes 100,000 of these, and json.dumps is the cost.
        return b'{"v":%d,"kek":%s,"nonce":"%s","ct":"%s"}' % (
            VERSION,
            _json_str(self.kek_id),
            base64.b64encode(self.nonce),
            base64.b64encode(self.ciphertext),
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, what: str) -> Envelope:
        """Parse an envelope; `what` names its owner in the error (e.g. "volume pvc-1")."""
        m = _EXACT.fullmatch(raw)
        if m is not None:
            try:
                env = cls(
                    kek_id=m.group(1).decode(),
                    nonce=binascii.a2b_base64(m.group(2), strict_mode=True),
                    ciphertext=binascii.a2b_base64(m.group(3), strict_mode=True),
                )
            except (binascii.Error, UnicodeDecodeError):
                pass  # the slow path below says what is wrong
            else:
                if len(env.nonce) == NONCE_BYTES:
                    return env
        try:
            doc = json.loads(raw.decode())
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
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise FailedPrecondition(
                f"the wrapped key of {what} is not a readable envelope; the record is damaged"
            ) from None
        if len(env.nonce) != NONCE_BYTES:
            raise FailedPrecondition(f"the wrapped key of {what} has a malformed nonce")
        return env


def peek_kek_id(raw: bytes, *, what: str) -> str:
    """The KEK id an envelope names, without unwrapping it."""
    return Envelope.from_bytes(raw, what=what).kek_id


def names_kek(raw: bytes, kek_id: str) -> bool:
    """Whether the envelope `raw` is wrapped under `kek_id`: a fast test for reencrypt's
    sweep. Base64 fields hold no quotes, so the marker cannot match inside them; an
    envelope written in another layout fails the fast test and is parsed."""
    if b'"kek":%s' % json.dumps(kek_id).encode() in raw:
        return True
    try:
        return Envelope.from_bytes(raw, what="").kek_id == kek_id
    except FailedPrecondition:
        return False


@functools.lru_cache(maxsize=256)
def _json_str(text: str) -> bytes:
    return json.dumps(text).encode()


class _Nonces(threading.local):
    """Random nonces drawn from the OS in blocks: one getrandom call per 1024 wraps instead
    of one per wrap, which is what bounded reencrypt's speed. Each nonce is still 96 fresh
    random bits used once."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def take(self) -> bytes:
        if self.at + NONCE_BYTES > len(self.pool):
            self.pool, self.at = os.urandom(NONCE_BYTES * 1024), 0
        nonce = self.pool[self.at : self.at + NONCE_BYTES]
        self.at += NONCE_BYTES
        return nonce


_nonces = _Nonces()


def _forget_nonces_in_child() -> None:
    # A forked child would otherwise hand out the same nonces as its parent.
    _nonces.pool, _nonces.at = b"", 0


os.register_at_fork(after_in_child=_forget_nonces_in_child)


def new_nonce() -> bytes:
    """A fresh random 96-bit AES-GCM nonce (from the per-thread block of OS randomness)."""
    return _nonces.take()


def wrap(kek: Kek, dek: Secret, volume_id: str) -> bytes:
    nonce = _nonces.take()
    ct = kek.aead.encrypt(nonce, dek.reveal(), volume_id.encode())
    return Envelope(kek.id, nonce, ct).to_bytes()


def open_envelope(env: Envelope, volume_id: str, kek: Kek) -> Secret:
    """The DEK inside a parsed envelope of `volume_id`, with the KEK it names."""
    try:
        return Secret(kek.aead.decrypt(env.nonce, env.ciphertext, volume_id.encode()))
    except InvalidTag:
        raise FailedPrecondition(
            f"the wrapped key of volume {volume_id} does not unwrap with KEK {env.kek_id}: the"
            " record was altered, copied from another volume, or the KEK material is not the"
            " one it was wrapped with"
        ) from None


def rewrap_many(
    items: Sequence[tuple[str, bytes]], find_kek: Callable[[str], Kek], current: Kek
) -> list[bytes | None]:
    """For each (volume id, envelope) pair, the envelope wrapped under `current` instead, or
    None when it already is.

    Reencrypt does this 100,000 times in a row, so a batch shares what the keys have in
    common: the exact layout `to_bytes` writes is handled without building an Envelope or a
    Secret per key, the KEKs are looked up once per batch, and the batch's nonces come from
    one read of OS randomness (each still 96 fresh random bits used once). Any other layout,
    and every error, takes the path of `unwrap` and `wrap`, and its precise message."""
    out: list[bytes | None] = []
    fresh = os.urandom(NONCE_BYTES * len(items))
    seal = current.aead.encrypt
    current_id = current.id
    current_raw = current_id.encode()
    head = b'{"v":%d,"kek":%s,"nonce":"' % (VERSION, _json_str(current_id))
    keks: dict[bytes, Kek] = {}
    match, a2b, b2a = _EXACT.fullmatch, binascii.a2b_base64, binascii.b2a_base64
    for at, (volume_id, raw) in enumerate(items):
        m = match(raw)
        if m is not None:
            kek_raw, nonce_b64, ct_b64 = m.groups()
            if kek_raw == current_raw:
                out.append(None)
                continue
            try:
                nonce = a2b(nonce_b64, strict_mode=True)
                ciphertext = a2b(ct_b64, strict_mode=True)
            except binascii.Error:
                nonce = b""
            if len(nonce) == NONCE_BYTES:
                kek = keks.get(kek_raw) or keks.setdefault(kek_raw, find_kek(kek_raw.decode()))
                associated = volume_id.encode()
                try:
                    dek = kek.aead.decrypt(nonce, ciphertext, associated)
                except InvalidTag:
                    pass  # the slow path below says so, in its words
                else:
                    n = fresh[at * NONCE_BYTES : (at + 1) * NONCE_BYTES]
                    out.append(
                        head
                        + b2a(n, newline=False)
                        + b'","ct":"'
                        + b2a(seal(n, dek, associated), newline=False)
                        + b'"}'
                    )
                    continue
        env = Envelope.from_bytes(raw, what=f"volume {volume_id}")
        if env.kek_id == current_id:
            out.append(None)
        else:
            dek_secret = open_envelope(env, volume_id, find_kek(env.kek_id))
            out.append(wrap(current, dek_secret, volume_id))
    return out


def unwrap(raw: bytes, volume_id: str, find_kek: Callable[[str], Kek]) -> Secret:
    """Unwrap the DEK of `volume_id`; `find_kek` maps a KEK id to the loaded KEK or raises."""
    env = Envelope.from_bytes(raw, what=f"volume {volume_id}")
    return open_envelope(env, volume_id, find_kek(env.kek_id))
