"""Named crash points, so tests can kill the driver between two steps of an operation.

`CRYPTVOL_FAILPOINTS=create:after-record,stage:after-format` makes the process SIGKILL
itself when it reaches one of those points: the same abrupt end as an OOM kill or a node
losing power, at a place a test chooses. Unset (always, in production), a point costs a
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CRYPTVOL_FAILPOINTS"


def reached(name: str) -> None:
    armed = os.environ.get(ENV)
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
