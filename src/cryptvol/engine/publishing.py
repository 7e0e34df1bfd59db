"""Which publish mode serves a request: the engine's choice, from what the request asks."""

from __future__ import annotations

from cryptvol.engine.types import AccessType, Capability
from cryptvol.mounts.block import BlockBind
from cryptvol.mounts.host import HostMount
from cryptvol.mounts.modes import PublishMode

HOST = HostMount()
BLOCK = BlockBind()
# Unstage, unpublish, expand and stats carry no capability: each mode is asked in turn and
# acts only on what it finds of its own.
MODES: tuple[PublishMode, ...] = (HOST, BLOCK)


def mode_for(cap: Capability) -> PublishMode:
    return BLOCK if cap.access_type is AccessType.BLOCK else HOST
