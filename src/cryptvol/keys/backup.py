"""Passphrase-protected backup of the KEK set (`cryptvol keys export` / `keys import`).

The backup holds the key-set record (stage, roles, fingerprints) and the material of every
KEK in it, encrypted with AES-256-GCM under a key derived from the passphrase with scrypt.
Importing gives the material back to the configured provider, and puts back or repairs the
key-set record, checking every fingerprint, so a backup of other keys is refused. A key set
sealed by another root key than the provider's is resealed only when asked (`reseal`): that
is how a lost root key is replaced by a new one (made with `keys init-root-key`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cryptvol.errors import Aborted, FailedPrecondition, InvalidArgument
from cryptvol.keys.kek import Kek, KekProvider
from cryptvol.keys.keyset import KEYSET_KEY, KeySetRecord
from cryptvol.keys.manager import check_sealer, load_key_set
from cryptvol.store.base import Compare, Put, Store
from cryptvol.system.secret import Secret

_FORMAT = "cryptvol-kek-backup"
_AAD = b"cryptvol kek backup v1"
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
MIN_PASSPHRASE = 12


def export_keys(store: Store, provider: KekProvider, passphrase: Secret) -> bytes:
    _check_passphrase(passphrase)
    loaded = load_key_set(store, provider, create=False)
    inner = json.dumps(
        {
            "record": json.loads(loaded.record.to_bytes()),
            "keks": {
                k.id: {"key": base64.b64encode(k.key.reveal()).decode(), "created": k.created}
                for k in loaded.keks.values()
            },
        }
    ).encode()
    salt, nonce = os.urandom(16), os.urandom(12)
    ct = AESGCM(_derive(passphrase, salt, _SCRYPT)).encrypt(nonce, inner, _AAD)
    return json.dumps(
        {
            "format": _FORMAT,
            "v": 1,
            "kdf": {"name": "scrypt", **_SCRYPT, "salt": base64.b64encode(salt).decode()},
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
            "keks": [k.id for k in loaded.record.keks],
        },
        indent=1,
    ).encode()


def import_keys(
    store: Store, provider: KekProvider, blob: bytes, passphrase: Secret, *, reseal: bool = False
) -> list[str]:
    """Restore a backup; return the KEK ids restored. With `reseal`, a key set sealed by
    another root key is sealed again by the provider's."""
    record, keks = _open(blob, passphrase)
    sealer = provider.sealer()
    refs: dict[str, str] | None = None
    for _ in range(10):
        entry = store.get(KEYSET_KEY)
        if entry is None:
            target = record
            revision = 0
        else:
            target = KeySetRecord.from_bytes(entry.value)
            revision = entry.revision
            for rec in target.keks:
                if rec.id in keks and keks[rec.id].fingerprint != rec.fingerprint:
                    raise InvalidArgument(
                        f"the backup's KEK {rec.id} is not the one the state store records"
                        " (fingerprints differ); this backup belongs to other keys"
                    )
        if not reseal:
            check_sealer(target, provider)
        else:
            lacking = [k.id for k in target.keks if k.id not in keks]
            if lacking:
                raise FailedPrecondition(
                    f"the backup lacks KEK(s) {', '.join(lacking)} of the key set; resealing"
                    " needs every KEK: export a backup that holds them"
                )
        if refs is None:
            refs = {k.id: provider.restore(k) for k in keks.values()}
        repaired = replace(
            target,
            keks=tuple(replace(k, ref=refs.get(k.id, k.ref)) for k in target.keks),
            sealed_by=sealer,
        )
        if store.txn([Compare(KEYSET_KEY, revision)], [Put(KEYSET_KEY, repaired.to_bytes())]):
            return sorted(refs)
    raise Aborted("the key set kept changing while importing; run the import again")


def _open(blob: bytes, passphrase: Secret) -> tuple[KeySetRecord, dict[str, Kek]]:
    try:
        doc = json.loads(blob)
        if doc.get("format") != _FORMAT or doc.get("v") != 1:
            raise ValueError("format")
        kdf = doc["kdf"]
        params = {"n": int(kdf["n"]), "r": int(kdf["r"]), "p": int(kdf["p"])}
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        ct = base64.b64decode(doc["ct"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("this is not a cryptvol KEK backup (or it is damaged)") from None
    try:
        inner = json.loads(AESGCM(_derive(passphrase, salt, params)).decrypt(nonce, ct, _AAD))
    except InvalidTag:
        raise InvalidArgument("the passphrase is wrong, or the backup was altered") from None
    record = KeySetRecord.from_bytes(json.dumps(inner["record"]).encode())
    keks = {
        kid: Kek(kid, Secret(base64.b64decode(item["key"])), float(item["created"]))
        for kid, item in inner["keks"].items()
    }
    for rec in record.keks:
        if rec.id not in keks or keks[rec.id].fingerprint != rec.fingerprint:
            raise FailedPrecondition(f"the backup is inconsistent about KEK {rec.id}")
    return record, keks


def _derive(passphrase: Secret, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(salt=salt, length=32, **params).derive(passphrase.reveal())


def _check_passphrase(passphrase: Secret) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidArgument(f"a backup passphrase has at least {MIN_PASSPHRASE} characters")
