"""LUKS2 online reencryption: a new volume key for an open volume, in place.

`cryptsetup reencrypt` rewrites the data area one hotzone at a time while the volume stays
open and in use, and records its position in the LUKS2 header, so an interrupted run
resumes (`--resume-only`) and a run killed mid-hotzone is recovered by the next `open`.
While it runs, the open mapping is stacked over two helper devices (`NAME-overlay`,
`NAME-hotzone-forward`); a run killed while the hotzone was suspended leaves every I/O to
that part hanging. `release_interrupted` does what cryptsetup itself does when a step
fails: it replaces the suspended hotzone with an error target (pending and new I/O there
fail instead of hanging, and nothing half-written reaches the disk) and resumes the stack,
so the volume can be unmounted, closed, and opened again, which recovers and resumes.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptvol.luks.cryptsetup import CRYPTSETUP, MAPPER_DIR, FormatOptions
from cryptvol.system import CommandError, process, run
from cryptvol.system.secret import Secret

log = logging.getLogger(__name__)
MIB = 1024 * 1024
# Each hotzone is one step the header records: small enough that progress moves and an
# interruption loses little, large enough that the two header writes per step stay cheap.
_HOTZONE_MIN, _HOTZONE_MAX = 4 * MIB, 64 * MIB
# A SIGTERM lets cryptsetup finish the hotzone in hand; that can take a while on slow disks.
STOP_GRACE_SECONDS = 300.0
_HELPERS = ("hotzone-forward", "overlay")
_REQUIREMENT = "online-reencrypt"


@dataclass(frozen=True)
class Progress:
    done_bytes: int
    total_bytes: int
    bytes_per_second: int

    @property
    def percent(self) -> float:
        return 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        return (f"{self.percent:.0f}% ({self.done_bytes // MIB} of {self.total_bytes // MIB} "
                f"MiB, {self.bytes_per_second / MIB:.1f} MiB/s)")


def hotzone_for(size_bytes: int) -> int:
    """About a sixteenth of the volume, between 4 and 64 MiB, in whole MiB."""
    return max(_HOTZONE_MIN, min(_HOTZONE_MAX, size_bytes // 16 // MIB * MIB))


def in_progress(metadata: dict[str, Any]) -> bool:
    """Whether the header (`cryptsetup.dump_metadata`) records an unfinished reencryption."""
    required = metadata.get("config", {}).get("requirements", {}).get("mandatory", [])
    return any(str(r).startswith(_REQUIREMENT) for r in required)


def volume_key_digest(metadata: dict[str, Any]) -> str:
    """What identifies the volume key(s) in the header without revealing them: the stored
    digests. A reencryption that finished leaves another one."""
    digests = metadata.get("digests", {})
    return ",".join(sorted(str(d.get("digest", "")) for d in digests.values()))


class Reencryption:
    """One `cryptsetup reencrypt` of an open volume, started in the background. The thread
    that starts it must `follow` it: the child dies with that thread (a driver killed
    mid-way takes it along, as its container would)."""

    def __init__(self, device: str, key: Secret, options: FormatOptions, *, resume: bool,
                 hotzone_bytes: int) -> None:
        argv = [CRYPTSETUP, "reencrypt", "--batch-mode", "--progress-json",
                "--progress-frequency", "1", "--hotzone-size", f"{hotzone_bytes // MIB}M"]
        # The new volume key's keyslot is stretched as the plan says; a resumed run made it.
        argv += ["--resume-only"] if resume else options.keyslot_argv()
        self.argv = [*argv, "--key-file=-", device]
        self.stopping = False
        self.proc = process.start(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  secret=key.reveal(), die_with_parent=True)

    def follow(self, on_progress: Callable[[Progress], None]) -> bool:
        """Report progress until cryptsetup exits; True when the reencryption finished,
        False when `stop` interrupted it. A failure raises CommandError."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for raw in self.proc.stdout:
            progress = _parse(raw)
            if progress is not None:
                on_progress(progress)
        stderr = self.proc.stderr.read().decode(errors="replace")
        code = self.proc.wait()
        if self.stopping:
            return False
        if code != 0:
            raise CommandError(self.argv, code, stderr)
        return True

    def stop(self) -> None:
        """Interrupt at the next safe point (cryptsetup's SIGTERM handling) and wait."""
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.stop(self.proc, grace=0)


def _parse(raw: bytes) -> Progress | None:
    try:
        doc = json.loads(raw)
        return Progress(int(doc["device_bytes"]), int(doc["device_size"]), int(doc["speed"]))
    except (ValueError, KeyError, TypeError):
        return None


def helpers_of(name: str) -> list[str]:
    """The helper devices an online reencryption of mapping `name` has stacked, if any."""
    return [f"{name}-{h}" for h in _HELPERS if (MAPPER_DIR / f"{name}-{h}").exists()]


def release_interrupted(name: str) -> bool:
    """Make the device stack a killed reencryption of `name` left safe to use and to close
    (see the module's docstring); return whether there was one. Needs no key."""
    helpers = helpers_of(name)
    if not helpers:
        return False
    hotzone, overlay = f"{name}-hotzone-forward", f"{name}-overlay"
    states = {dev: _state(dev) for dev in (*helpers, name)}
    if overlay in states and "I" in states[overlay][:2]:
        # A table loaded for the next hotzone but never switched to: drop it.
        _dmsetup("clear", overlay)
    if hotzone in states and _suspended(states[hotzone]):
        _dmsetup("load", hotzone, "--table", f"0 {_sectors(hotzone)} error")
        _dmsetup("resume", hotzone)
        log.warning("reencryption was interrupted mid-hotzone; I/O to that part fails until "
                    "the volume is staged again", extra={"mapping": name})
    for dev in (overlay, name):
        if dev in states and _suspended(states[dev]):
            _dmsetup("resume", dev)
    return True


def _dmsetup(*args: str) -> str:
    return run(["dmsetup", *args], timeout=60).stdout


def _state(device: str) -> str:
    # The attr column: live table, inactive table, suspended, read-only ("L-sw", "LI-w").
    return _dmsetup("info", "--columns", "--noheadings", "-o", "attr", device).strip()


def _suspended(attr: str) -> bool:
    return len(attr) > 2 and attr[2] == "s"


def _sectors(device: str) -> int:
    end = 0
    for line in _dmsetup("table", device).splitlines():
        start, length = line.split()[:2]
        end = max(end, int(start) + int(length))
    return end
