"""Volume and snapshot ids: derived from the create name, so a retry after a crash finds its
work. The prefixes keep the two kinds apart wherever an id alone is seen."""

from __future__ import annotations

import hashlib
import re

_VOLUME_ID = re.compile(r"^cv-[0-9a-f]{32}$")
_SNAPSHOT_ID = re.compile(r"^cs-[0-9a-f]{32}$")


def volume_id_for(name: str) -> str:
    return "cv-" + _digest(name)


def is_volume_id(value: str) -> bool:
    return bool(_VOLUME_ID.match(value))


def snapshot_id_for(name: str) -> str:
    return "cs-" + _digest(name)


def is_snapshot_id(value: str) -> bool:
    return bool(_SNAPSHOT_ID.match(value))


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]
