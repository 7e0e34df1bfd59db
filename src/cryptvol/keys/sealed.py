"""Small secrets sealed under the current KEK for a caller outside cryptvol's volumes: the
KMS v2 plugin, for kube-apiserver's data keys.

A sealed value is `nonce (12 bytes) || AES-256-GCM ciphertext and tag`, 28 bytes more than
the plaintext. Its key id (the KEK's id) and its annotations travel beside it, as the KMS v2
API has them, and both are bound as associated data: a ciphertext given back with another
key id, or with an annotation added, dropped or changed, does not open. The annotation
`FORMAT_ANNOTATION` names this layout, so a later one can be told apart.

Encrypt needs a key set this replica has confirmed against the store within its report's
lease: otherwise a rotation that went ahead without this replica (its lease lapsed) could
already be retiring the KEK it would encrypt with. Decrypt needs only the loaded KEK.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from cryptvol.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cryptvol.keys.envelope import NONCE_BYTES, new_nonce
from cryptvol.keys.kek import Kek
from cryptvol.keys.replica import Replica
from cryptvol.keys.usage import KekUsage
from cryptvol.system.secret import Secret

FORMAT_ANNOTATION = "version.kms.cryptvol.io"
FORMAT = b"1"
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES
# kube-apiserver refuses a ciphertext over 1 kB: never hand it one.
MAX_CIPHERTEXT = 1024
MAX_PLAINTEXT = MAX_CIPHERTEXT - OVERHEAD
_LABEL = b"cryptvol kms v1"
_SELF_TEST = b"cryptvol kms status round trip"


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    key_id: str
    annotations: dict[str, bytes]


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    key_id: str


def _aad(key_id: str, annotations: dict[str, bytes]) -> bytes:
    # Length-prefixed fields: no two (key id, annotations) pairs encode alike.
    parts = [_LABEL, key_id.encode()]
    for name in sorted(annotations):
        parts += [name.encode(), annotations[name]]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def seal(kek: Kek, plaintext: Secret) -> Sealed:
    if not 0 < len(plaintext) <= MAX_PLAINTEXT:
        raise InvalidArgument(
            f"the plaintext is {len(plaintext)} bytes; it must be 1 to {MAX_PLAINTEXT} bytes"
            f" (its ciphertext must stay within the apiserver's {MAX_CIPHERTEXT} bytes)"
        )
    annotations = {FORMAT_ANNOTATION: FORMAT}
    nonce = new_nonce()
    ct = kek.aead.encrypt(nonce, plaintext.reveal(), _aad(kek.id, annotations))
    return Sealed(nonce + ct, kek.id, annotations)


def unseal(kek: Kek, ciphertext: bytes, annotations: dict[str, bytes]) -> Secret:
    version = annotations.get(FORMAT_ANNOTATION)
    if version != FORMAT:
        what = "is missing" if version is None else "names a layout this plugin does not know"
        raise InvalidArgument(
            f"the annotation {FORMAT_ANNOTATION} {what}: this ciphertext was not made by"
            " cryptvol's KMS plugin, or its annotations were not passed back as Encrypt gave"
            " them"
        )
    if len(ciphertext) <= OVERHEAD:
        raise InvalidArgument(
            f"the ciphertext is {len(ciphertext)} bytes, too short to be one this plugin made"
        )
    try:
        return Secret(
            kek.aead.decrypt(
                ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], _aad(kek.id, annotations)
            )
        )
    except InvalidTag:
        raise InvalidArgument(
            f"the ciphertext does not decrypt with key {kek.id}: it was altered, or the key_id"
            " or the annotations are not the ones Encrypt returned with it"
        ) from None


class Sealer:
    """Encrypt, decrypt and health for the KMS plugin, from one replica's loaded key set;
    every use of a KEK is noted in `usage`."""

    def __init__(self, replica: Replica, usage: KekUsage) -> None:
        self.replica = replica
        self.manager = replica.manager
        self.usage = usage

    def _writable_kek(self) -> Kek:
        loaded = self.manager.loaded
        stale = self.replica.unconfirmed_reason()
        if stale:
            raise Unavailable(f"not encrypting: {stale}")
        return loaded.current

    def encrypt(self, plaintext: Secret) -> Sealed:
        kek = self._writable_kek()
        sealed = seal(kek, plaintext)
        self.usage.note(kek.id)
        return sealed

    def decrypt(self, ciphertext: bytes, key_id: str, annotations: dict[str, bytes]) -> Secret:
        kek = self._kek(key_id)
        plaintext = unseal(kek, ciphertext, annotations)
        self.usage.note(kek.id)
        return plaintext

    def _kek(self, key_id: str) -> Kek:
        shown = key_id if len(key_id) <= 64 else key_id[:64] + "…"
        loaded = self.manager.loaded
        kek = loaded.keks.get(key_id)
        if kek is None:
            # A rotation may have happened since this replica loaded its key set.
            loaded = self.manager.refresh_if_stale(loaded)
            kek = loaded.keks.get(key_id)
        if kek is not None:
            return kek
        retired = next((r for r in loaded.record.retired if r.id == key_id), None)
        if retired is not None:
            raise FailedPrecondition(
                f"key {shown} is retired: data encrypted with it can no longer be decrypted;"
                " restore the key set from a backup taken before its retirement"
                " (cryptvol keys import) to read it"
            )
        raise NotFound(f"key {shown} is not a key of this key manager")

    def health(self) -> Health:
        """What Status answers: ok only after a real round trip with the current KEK."""
        loaded = self.manager.loaded_or_none()
        key_id = loaded.current_id if loaded else ""
        if not self.replica.ready():
            return Health(False, self.replica.not_ready_reason(), key_id)
        stale = self.replica.unconfirmed_reason()
        if stale:
            return Health(False, stale, key_id)
        try:
            kek = self.manager.loaded.current
            sealed = seal(kek, Secret(_SELF_TEST))
            if unseal(kek, sealed.ciphertext, sealed.annotations).reveal() != _SELF_TEST:
                return Health(False, f"the round trip with key {kek.id} gave other bytes", kek.id)
        except (InvalidArgument, Unavailable) as exc:
            return Health(False, f"the round trip with key {key_id} failed: {exc}", key_id)
        return Health(True, "ok", kek.id)
