"""Reencryptions running on this node: at most one per volume, each in a thread of its own.

A volume staged with `cloneReencrypt` gets a new volume key while its workload runs: the
stage starts the reencryption and returns, NodeGetVolumeStats reports its progress, the
log has a line every tenth of the way, and unstage interrupts it at a safe point (the next
stage resumes it). Whatever ends it, the volume stays usable: the LUKS2 header knows where
it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptvol.errors import CryptvolError
from cryptvol.luks.cryptsetup import FormatOptions
from cryptvol.luks.reencrypt import Progress, Reencryption, hotzone_for
from cryptvol.system import failpoints
from cryptvol.system.secret import Secret

log = logging.getLogger(__name__)
_LOG_EVERY_PERCENT = 10.0


@dataclass
class _Job:
    volume_id: str
    started: threading.Event = field(default_factory=threading.Event)
    handle: Reencryption | None = None
    progress: Progress | None = None
    logged_percent: float = -_LOG_EVERY_PERCENT
    thread: threading.Thread | None = None


class Reencryptions:
    def __init__(self, on_finished: Callable[[str], None]) -> None:
        self._on_finished = on_finished
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        # Why the last run of a volume ended early, until the next one starts.
        self._failures: dict[str, str] = {}

    def start(self, volume_id: str, device: str, size_bytes: int, key: Secret,
              options: FormatOptions, *, resume: bool) -> None:
        """Start reencrypting the open `device` unless that already runs here."""
        with self._lock:
            if volume_id in self._jobs:
                return
            job = _Job(volume_id)
            self._jobs[volume_id] = job
            self._failures.pop(volume_id, None)
        job.thread = threading.Thread(
            target=self._run, args=(job, device, size_bytes, key, options, resume),
            name=f"reencrypt-{volume_id}", daemon=True)
        job.thread.start()
        job.started.wait()

    def running(self, volume_id: str) -> bool:
        with self._lock:
            return volume_id in self._jobs

    def describe(self, volume_id: str) -> str:
        """A line for NodeGetVolumeStats: how far the reencryption is, or why it stopped;
        empty when none ran here."""
        with self._lock:
            job = self._jobs.get(volume_id)
            failure = self._failures.get(volume_id, "")
        if job is not None:
            done = job.progress.describe() if job.progress else "starting"
            return f"reencrypting to a new volume key: {done}"
        return failure

    def stop(self, volume_id: str) -> None:
        """Interrupt the volume's reencryption at its next safe point and wait for it."""
        with self._lock:
            job = self._jobs.get(volume_id)
        if job is None:
            return
        if job.handle is not None:
            job.handle.stop()
        if job.thread is not None:
            job.thread.join()

    def stop_all(self) -> None:
        """On shutdown: stop every reencryption at a safe point, not mid-hotzone."""
        with self._lock:
            volume_ids = list(self._jobs)
        for volume_id in volume_ids:
            self.stop(volume_id)

    def _run(self, job: _Job, device: str, size_bytes: int, key: Secret,
             options: FormatOptions, resume: bool) -> None:
        extra = {"volume": job.volume_id}
        try:
            try:
                job.handle = Reencryption(device, key, options, resume=resume,
                                          hotzone_bytes=hotzone_for(size_bytes))
            finally:
                job.started.set()
            log.info("reencryption started" if not resume else "reencryption resumed",
                     extra=extra)
            finished = job.handle.follow(lambda p: self._progress(job, p))
        except CryptvolError as exc:
            self._end(job, f"the reencryption to a new volume key stopped: {exc}; stage the "
                           "volume again to resume it")
            log.error("reencryption failed", extra={**extra, "error": str(exc)})
            return
        if not finished:
            self._end(job, "the reencryption to a new volume key was interrupted; it resumes "
                           "at the next stage")
            log.info("reencryption interrupted", extra=extra)
            return
        try:
            self._on_finished(job.volume_id)
        except CryptvolError as exc:
            # The header has the new key; the next stage sees that and records it.
            log.warning("reencryption finished but not recorded",
                        extra={**extra, "error": str(exc)})
        self._end(job, "")
        log.info("reencryption finished", extra=extra)

    def _progress(self, job: _Job, progress: Progress) -> None:
        job.progress = progress
        if 0 < progress.done_bytes < progress.total_bytes:
            failpoints.reached("reencrypt:progress")
        if progress.percent - job.logged_percent >= _LOG_EVERY_PERCENT:
            job.logged_percent = progress.percent
            log.info("reencrypting", extra={"volume": job.volume_id,
                                            "percent": round(progress.percent, 1),
                                            "mib_per_s": round(progress.bytes_per_second
                                                               / 2**20, 1)})

    def _end(self, job: _Job, failure: str) -> None:
        with self._lock:
            self._jobs.pop(job.volume_id, None)
            if failure:
                self._failures[job.volume_id] = failure
