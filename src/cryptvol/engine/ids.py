"""Volume ids: derived from the CreateVolume name, so a retry after a crash finds its work."""

from __future__ import annotations

import hashlib
import re

_VOLUME_ID = re.compile(r"^cv-[0-9a-f]{32}$")


def volume_id_for(name: str) -> str:
    return "cv-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def is_volume_id(value: str) -> bool:
    return bool(_VOLUME_ID.match(value))
