"""The Kata shim's management API, over HTTP on its unix socket: guest volume stats and resize.

Facts from Kata's source (`src/runtime/pkg/containerd-shim-v2/shim_management.go`,
`src/runtime/cmd/kata-runtime/kata-volume.go`, runtime-rs `shim_mgmt/handlers.rs`):
- the socket is `<sandboxes dir>/<sandbox id>/shim-monitor.sock`: `/run/vc/sbs` for the Go
  runtime, `/run/kata` for runtime-rs (the Go runtime's is tried first, as Kata does);
- `/direct-volume/stats?path=<device>` answers the guest agent's VolumeStatsResponse as
  JSON (`{"usage": [{"available", "total", "used", "unit"}], "volume_condition": {...}}`,
  unit 1 bytes, 2 inodes); the Go shim serves it on any method, runtime-rs on POST only;
- `/direct-volume/resize` takes a JSON body: `{"VolumePath", "Size"}` for the Go shim,
  `{"volume_guest_path", "size"}` for runtime-rs.
The path both name is the mountInfo.json `device`: the shim matches it against the
container mounts whose source Kata replaced with that device.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.mounts.filesystem import Usage
from cryptvol.mounts.kata_defaults import GO_SANDBOXES, RS_SANDBOXES
from cryptvol.system.http import request

SOCKET_NAME = "shim-monitor.sock"
STATS_URL = "/direct-volume/stats"
RESIZE_URL = "/direct-volume/resize"
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# What a shim's error body may add to a message: its first line, this long at most.
_BODY_TAIL = 200

Flavor = Literal["go", "rs"]


@dataclass(frozen=True)
class ShimSocket:
    path: Path
    flavor: Flavor


class ShimClient:
    def __init__(self, go_sandboxes: Path = GO_SANDBOXES, rs_sandboxes: Path = RS_SANDBOXES,
                 timeout: httpx.Timeout = TIMEOUT) -> None:
        self.dirs: tuple[tuple[Path, Flavor], ...] = ((go_sandboxes, "go"), (rs_sandboxes, "rs"))
        self.timeout = timeout

    def socket(self, sandbox_id: str) -> ShimSocket | None:
        """The live shim's socket of `sandbox_id`, or None when no shim serves it."""
        if not _SANDBOX_ID.match(sandbox_id):
            raise InvalidArgument(f"{sandbox_id!r} is not a Kata sandbox id")
        for base, flavor in self.dirs:
            path = base / sandbox_id / SOCKET_NAME
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    return ShimSocket(path, flavor)
            except OSError:
                continue
        return None

    def stats(self, shim: ShimSocket, device: str) -> Usage:
        method = "GET" if shim.flavor == "go" else "POST"
        body = self._call(shim, method, STATS_URL, params={"path": device}, what="stats")
        return _usage(body)

    def resize(self, shim: ShimSocket, device: str, size: int) -> None:
        payload: dict[str, object] = (
            {"VolumePath": device, "Size": size} if shim.flavor == "go"
            else {"volume_guest_path": device, "size": size}
        )
        self._call(shim, "POST", RESIZE_URL, body=payload, what="resize")

    def _call(self, shim: ShimSocket, method: str, url: str, *, what: str,
              params: dict[str, str] | None = None, body: object = None) -> bytes:
        where = f"the Kata shim at {shim.path}"
        transport = httpx.HTTPTransport(uds=str(shim.path))
        with httpx.Client(transport=transport, timeout=self.timeout, trust_env=False) as client:
            response = request(client, method, f"http://shim{url}",
                               f"{where} (volume {what})", params=params, json=body)
        if response.status_code != 200:
            text = response.text.strip().splitlines()[:1]
            detail = f": {text[0][:_BODY_TAIL]}" if text else ""
            raise FailedPrecondition(
                f"{where} refused the volume {what} (HTTP {response.status_code}){detail}"
            )
        return response.content


def _usage(raw: bytes) -> Usage:
    """A VolumeStatsResponse as JSON, as the Go shim (enum units as numbers) or another
    encoder (enum names) writes it; absent numbers are zero, as in proto3."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise FailedPrecondition("the Kata shim answered volume stats that are not JSON")\
            from None
    units: dict[str, dict[str, Any]] = {}
    for item in (doc.get("usage") or []) if isinstance(doc, dict) else []:
        if isinstance(item, dict):
            unit = {1: "bytes", 2: "inodes", "BYTES": "bytes", "INODES": "inodes"}.get(
                item.get("unit", 0), "")
            units[unit] = item
    if "bytes" not in units:
        raise FailedPrecondition("the Kata shim answered volume stats without a bytes figure")
    b, i = units["bytes"], units.get("inodes", {})
    return Usage(
        total_bytes=int(b.get("total", 0)),
        used_bytes=int(b.get("used", 0)),
        available_bytes=int(b.get("available", 0)),
        total_inodes=int(i.get("total", 0)),
        used_inodes=int(i.get("used", 0)),
        available_inodes=int(i.get("available", 0)),
    )
