"""The embedded KEK provider: KEK material in a 0600 JSON file in the state dir.

The file maps KEK ids to their material: `{"v":1,"keks":{"<id>":{"key":"<b64>",
"created":<epoch>}}}`. It is rewritten whole (temp file, fsync, rename) under an flock, so a
crash leaves the old or the new file, never half of one, and two processes adding keys at
once both keep theirs. Material is only ever added by `create` and removed by `discard`: a
missing or unreadable file is reported, never replaced by a new key.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.keys.kek import Kek, new_kek_material
from cryptvol.system.files import write_private_file
from cryptvol.system.secret import Secret

KEK_FILE = "kek.json"
_VERSION = 1


class LocalKekProvider:
    """KEKs in `<state_dir>/kek.json` (mode 0600)."""

    def __init__(self, state_dir: Path, *, file_name: str = KEK_FILE) -> None:
        self.path = Path(state_dir) / file_name
        self._lock_path = Path(state_dir) / f".{file_name}.lock"

    @property
    def name(self) -> str:
        return f"local file {self.path}"

    @property
    def ref(self) -> str:
        return f"file:{self.path.name}"

    # -- provider interface --------------------------------------------------------------

    def create(self, kek_id: str) -> tuple[Kek, str]:
        kek = Kek(kek_id, new_kek_material(), _now())
        with self._locked():
            keks = self._read(missing_ok=True)
            keks[kek.id] = kek
            self._write(keks)
        return kek, self.ref

    def open(self, kek_id: str, ref: str, created: float) -> Kek:
        if ref != self.ref:
            raise FailedPrecondition(
                f"KEK {kek_id} is recorded as held by {ref!r}, not by {self.name}: start"
                " cryptvol with the KEK provider that made it"
            )
        keks = self._read(missing_ok=False, needed=kek_id)
        kek = keks.get(kek_id)
        if kek is None:
            raise FailedPrecondition(
                f"the KEK file {self.path} does not hold KEK {kek_id}, which the state store"
                " records and wrapped keys depend on; restore the file from a backup"
                " (cryptvol keys import). cryptvol never makes a new KEK in its place"
            )
        return kek

    def discard(self, kek_id: str) -> None:
        with self._locked():
            keks = self._read(missing_ok=True)
            if keks.pop(kek_id, None) is not None:
                self._write(keks)

    def sealer(self) -> str:
        return ""  # the material is kept as it is, in a file only this node reads

    def sealer_of(self, ref: str) -> str:
        return ""

    def held(self) -> int:
        return len(self._read(missing_ok=True))

    # -- more than the interface ------------------------------------------------------------

    def load_all(self) -> dict[str, Kek]:
        return self._read(missing_ok=True)

    def restore(self, kek: Kek) -> str:
        """Add a KEK from a backup; one already present must hold the same material."""
        with self._locked():
            held = self._read(missing_ok=True)
            old = held.get(kek.id)
            if old is not None and old.key != kek.key:
                raise InvalidArgument(
                    f"the backup's KEK {kek.id} differs from the one in {self.path}"
                )
            held[kek.id] = kek
            self._write(held)
        return self.ref

    # -- the file -------------------------------------------------------------------------

    def _read(self, *, missing_ok: bool, needed: str = "") -> dict[str, Kek]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise FailedPrecondition(
                f"the KEK file {self.path} is missing, but the state store records KEK"
                f" {needed} and wrapped keys depend on it; restore the file from a backup"
                " (cryptvol keys import). cryptvol never makes a new KEK in its place"
            ) from None
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot open the KEK file {self.path}: {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise FailedPrecondition(
                    f"the KEK file {self.path} has mode {mode:04o}; it must be 0600"
                    f" (chmod 600 {self.path})"
                )
            raw = f.read()
        try:
            return _parse(raw)
        except (ValueError, KeyError, TypeError, binascii.Error, InvalidArgument):
            raise FailedPrecondition(
                f"the KEK file {self.path} is corrupt (not a cryptvol KEK file of version"
                f" {_VERSION}); restore it from a backup (cryptvol keys import)"
            ) from None

    def _write(self, keks: dict[str, Kek]) -> None:
        doc = {
            "v": _VERSION,
            "keks": {
                k.id: {"key": base64.b64encode(k.key.reveal()).decode(), "created": k.created}
                for k in keks.values()
            },
        }
        write_private_file(self.path, json.dumps(doc).encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _parse(raw: bytes) -> dict[str, Kek]:
    doc: Any = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("v") != _VERSION or not isinstance(doc["keks"], dict):
        raise ValueError("not a KEK file")
    out: dict[str, Kek] = {}
    for kek_id, item in doc["keks"].items():
        key = Secret(base64.b64decode(item["key"], validate=True))
        out[kek_id] = Kek(str(kek_id), key, float(item["created"]))
    return out


def _now() -> float:
    return time.time()
