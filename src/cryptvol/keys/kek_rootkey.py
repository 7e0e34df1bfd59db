"""KEK provider for clusters: KEK material sealed by a root key, kept in the state store.

The root key is 32 random bytes in a 0600 file that every replica mounts (in Kubernetes, a
Secret volume). Each KEK is sealed with AES-256-GCM under it, with the KEK id as associated
data, and the sealed blob is the reference the key-set record keeps; so every replica that
reads the record from etcd and holds the root key loads the same KEK set, and a new KEK made
by `prepare` on one machine is known to all. A cloud KMS provider is this class with the
root key replaced by calls to the KMS.

Only `cryptvol keys init-root-key` makes a root key file (`make_root_key`): a mistyped path
must never become a new root key that seals KEKs no other replica can open.

Reference format: `rootkey:v1:<root key fingerprint>:<b64 nonce||ciphertext>`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cryptvol.errors import FailedPrecondition
from cryptvol.keys.config import missing_root_key
from cryptvol.keys.kek import KEK_BYTES, Kek, kek_fingerprint, new_kek_material
from cryptvol.system.secret import Secret

_PREFIX = "rootkey:v1:"
_AAD = "cryptvol kek {}"


class RootKeyProvider:
    """KEKs sealed under the root key in `root_key_path`; the sealed form lives in the store."""

    def __init__(self, root_key_path: Path) -> None:
        self.path = Path(root_key_path)

    @property
    def name(self) -> str:
        return f"root key {self.path}"

    # -- provider interface --------------------------------------------------------------

    def create(self, kek_id: str) -> tuple[Kek, str]:
        root = self._root()
        kek = Kek(kek_id, new_kek_material(), time.time())
        return kek, self._seal(root, kek)

    def sealer(self) -> str:
        return kek_fingerprint(self._root())

    def held(self) -> int:
        return 0

    def sealer_of(self, ref: str) -> str:
        if not ref.startswith(_PREFIX) or ref.count(":") != 3:
            return ""
        return ref[len(_PREFIX) :].split(":", 1)[0]

    def open(self, kek_id: str, ref: str, created: float) -> Kek:
        root = self._root()
        if not ref.startswith(_PREFIX) or ref.count(":") != 3:
            raise FailedPrecondition(
                f"KEK {kek_id} is recorded as held by another provider ({ref.split(':')[0]}),"
                f" not by {self.name}: start cryptvol with the provider that made it"
            )
        root_fp, blob = ref[len(_PREFIX) :].split(":", 1)
        if root_fp != kek_fingerprint(root):
            raise FailedPrecondition(
                f"KEK {kek_id} is sealed by the root key with fingerprint {root_fp}, but"
                f" {self.path} holds the one with fingerprint {kek_fingerprint(root)}: mount"
                " the root key the cluster uses, or import a backup (cryptvol keys import)"
            )
        try:
            raw = base64.b64decode(blob, validate=True)
            material = AESGCM(root.reveal()).decrypt(
                raw[:12], raw[12:], _AAD.format(kek_id).encode()
            )
        except (binascii.Error, ValueError, InvalidTag):
            raise FailedPrecondition(
                f"the sealed material of KEK {kek_id} in the key-set record does not open with"
                f" {self.name}: the record was altered; import a backup (cryptvol keys import)"
            ) from None
        return Kek(kek_id, Secret(material), created)

    def discard(self, kek_id: str) -> None:
        """Nothing to do: the sealed KEK lives only in the key-set record, which drops it."""

    def restore(self, kek: Kek) -> str:
        """The reference for `kek` sealed under this root key."""
        return self._seal(self._root(), kek)

    # -- the root key file -----------------------------------------------------------------

    def _seal(self, root: Secret, kek: Kek) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(root.reveal()).encrypt(nonce, kek.key.reveal(), _AAD.format(kek.id).encode())
        return f"{_PREFIX}{kek_fingerprint(root)}:{base64.b64encode(nonce + ct).decode()}"

    def _root(self) -> Secret:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FailedPrecondition(missing_root_key(self.path)) from None
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot open the root key {self.path}: {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077 and not _is_kubernetes_secret_link(self.path):
                raise FailedPrecondition(
                    f"the root key file {self.path} has mode {mode:04o}; it must be 0600"
                )
            raw = f.read()
        try:
            doc = json.loads(raw)
            key = base64.b64decode(doc["key"], validate=True)
            if doc.get("v") != 1 or len(key) != KEK_BYTES:
                raise ValueError("shape")
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise FailedPrecondition(
                f"the root key file {self.path} is corrupt (not a cryptvol root key)"
            ) from None
        return Secret(key)


def make_root_key(path: Path) -> None:
    """Write a new root key file (0600); refuses to overwrite one."""
    root = new_kek_material()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    doc = json.dumps({"v": 1, "key": base64.b64encode(root.reveal()).decode()})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise FailedPrecondition(f"{path} exists; cryptvol never overwrites a root key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(doc.encode())
        f.flush()
        os.fsync(f.fileno())


def _is_kubernetes_secret_link(path: Path) -> bool:
    # Secret volumes show files through a `..data` symlink, with the mode the pod spec sets;
    # the kubelet owns it, so its mode is the operator's choice there.
    return path.is_symlink() and "..data" in os.readlink(path)
