"""Where Kata Containers keeps what cryptvol reads and writes, and the RuntimeClass handlers
that mean Kata, by default. Plain values with no imports, so the CLI can show them as
defaults without loading the Kata machinery."""

from __future__ import annotations

from pathlib import Path

# Kata's direct-assigned volume folders (src/runtime/pkg/direct-volume).
DIRECT_VOLUMES_DIR = Path("/run/kata-containers/shared/direct-volumes")
# The sandbox folders holding each shim's shim-monitor.sock: the Go runtime's, runtime-rs's.
GO_SANDBOXES = Path("/run/vc/sbs")
RS_SANDBOXES = Path("/run/kata")
RUNTIME_HANDLERS = ("kata*",)
