"""Run the real driver (`cryptvol serve`) as a child process and speak CSI to it.

Every test that needs a driver gets a fresh one with its own socket, state and pool, and
the exec audit on, so the test can read the argv and environment of every command the
driver started.

A driver serving the node role on a host that cannot open a dm-crypt mapping (this build
host) never says ready, by design; there `start` waits until it has said why in its log,
and tests use the RPCs that need no mapping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from cryptvol.csi.client import CsiClient
from cryptvol.csi.gen import csi_pb2
from cryptvol.vm import dm_crypt_available
from support.processes import dump_stacks, stop_server

NOT_READY_WITHOUT_DM_CRYPT = "not ready: the node service cannot open a dm-crypt mapping"


T = TypeVar("T")


def call_when_up(call: Callable[[], T], timeout: float = 60) -> T:
    """`call()` once the driver's socket answers (ready or not)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class RunningDriver:
    work: Path
    node_id: str = "node-1"
    role: str = "all"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Replaces the default `--pool-dir POOL_DIR` (e.g. several `--pool NAME=KIND:LOC`).
    pool_args: list[str] = field(default_factory=list)
    # More `cryptvol serve` flags (e.g. `--overcommit-ratio 2`, --kubeconfig and the Kata
    # folders).
    extra_args: list[str] = field(default_factory=list)
    # Tests read the debug lines; benchmarks run at the deployed default, info.
    log_level: str = "debug"
    # Node request paths must lie inside it; by default the folder holding `work`, which
    # is pytest's base temp dir when `work` is one of its tmp paths.
    kubelet_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    client: CsiClient | None = None
    _log_mark: int = 0

    @property
    def endpoint(self) -> str:
        return f"unix://{self.work}/csi.sock"

    @property
    def log_path(self) -> Path:
        return self.work / "driver.log"

    @property
    def audit_path(self) -> Path:
        return self.work / "exec-audit.jsonl"

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    @property
    def pool_dir(self) -> Path:
        return self.work / "pool"

    def argv(self, *more: str, log_level: str | None = None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cryptvol",
            "serve",
            "--endpoint",
            self.endpoint,
            "--node-id",
            self.node_id,
            "--state-dir",
            str(self.state_dir),
            *(self.pool_args or ["--pool-dir", str(self.pool_dir)]),
            "--role",
            self.role,
            "--kubelet-dir",
            str(self.kubelet_dir or self.work.parent),
            "--log-json",
            "--log-level",
            log_level or self.log_level,
            *self.extra_args,
            *more,
        ]

    def env(self, failpoints: str = "") -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["CRYPTVOL_EXEC_AUDIT"] = str(self.audit_path)
        if failpoints:
            env["CRYPTVOL_FAILPOINTS"] = failpoints
        else:
            env.pop("CRYPTVOL_FAILPOINTS", None)
        return env

    def start(self, failpoints: str = "", *more: str) -> CsiClient:
        self._log_mark = len(self.log_lines())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(*more), env=self.env(failpoints), stdout=log, stderr=log
        )
        log.close()
        self.client = CsiClient(self.endpoint)
        if self.role == "controller" or dm_crypt_available():
            self._wait_ready(180)
        else:
            self.wait_settled_not_ready(180)
        return self.client

    def _wait_ready(self, timeout: float) -> None:
        """Wait for Probe ready; a driver that exits meanwhile (it refused to start) fails
        at once, with what it said."""
        assert self.client is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                said = "\n".join(self.log_lines()[self._log_mark:][-20:])
                raise RuntimeError(f"the driver exited with {self.proc.returncode}:\n{said}")
            try:
                self.client.wait_ready(min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except TimeoutError as exc:
                if time.monotonic() >= deadline:
                    dump_stacks(self.proc)  # where it is stuck, into its log
                    said = "\n".join(self.log_lines()[self._log_mark:][-80:])
                    raise TimeoutError(f"{exc}; the driver's last lines:\n{said}") from None

    def start_refused(self, *more: str) -> subprocess.CompletedProcess[str]:
        """Run `cryptvol serve` expecting it to refuse to start: its exit and output, at the
        deployed log level, so the output is what an operator would see."""
        return subprocess.run(
            self.argv(*more, log_level="info"), env=self.env(), capture_output=True,
            text=True, timeout=180,
        )

    def wait_settled_not_ready(self, timeout: float) -> None:
        """Wait until the driver answers and has logged that it cannot serve the node role."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the driver exited with {self.proc.returncode}")
            said = self.log_lines()[self._log_mark :]
            if any(NOT_READY_WITHOUT_DM_CRYPT in line for line in said):
                try:
                    ready = self.client.identity.Probe(csi_pb2.ProbeRequest(), timeout=5)
                except grpc.RpcError:
                    pass
                else:
                    assert not ready.ready.value
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the driver did not settle in {timeout:.0f} s")

    def wait_killed(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.client:
            self.client.close()
            self.client = None
        if self.proc is None:
            return 0
        return stop_server(self.proc, "the driver", lambda: "\n".join(self.log_lines()[-60:]))

    def restart(self, failpoints: str = "") -> CsiClient:
        self.stop()
        # A crashed driver leaves its socket file behind; the new one must replace it.
        time.sleep(0.05)
        return self.start(failpoints)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def audit(self) -> list[dict[str, object]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]
