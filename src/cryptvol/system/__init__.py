"""The one place that runs external commands.

Its names are imported on first use: a read-only command such as `keys status` imports
`cryptvol.system.secret` and must not pay for the command runner (subprocess, tempfile,
shutil) it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptvol.system.runner import CommandError, CommandResult, SecretFd, run, run_pipeline

__all__ = ["CommandError", "CommandResult", "SecretFd", "run", "run_pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("cryptvol.system.runner"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
