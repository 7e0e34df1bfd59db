"""Which publish mode serves a request: the engine's choice, from what the request asks and
whether the volume is a Kata direct volume (see engine.direct): raw block is always the
block mode, a direct volume the kata mode, anything else the host mode."""

from __future__ import annotations

from cryptvol.engine.types import AccessType, Capability
from cryptvol.mounts.block import BlockBind
from cryptvol.mounts.host import HostMount
from cryptvol.mounts.kata import KataDirect
from cryptvol.mounts.modes import PublishMode


class PublishModes:
    def __init__(self, kata: KataDirect) -> None:
        self.host = HostMount()
        self.block = BlockBind()
        self.kata = kata
        # Unstage, unpublish, expand and stats carry no capability: each mode is asked in
        # turn and acts only on what it finds of its own. Kata goes first: an empty target
        # folder, all a direct publication leaves on the host, would pass for the host
        # mode's own.
        self.all: tuple[PublishMode, ...] = (kata, self.host, self.block)

    def for_request(self, cap: Capability, direct: bool) -> PublishMode:
        if cap.access_type is AccessType.BLOCK:
            return self.block
        return self.kata if direct else self.host
