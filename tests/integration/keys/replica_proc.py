"""Key-manager replica processes (`python -m cryptvol.cli.keys serve-replica`) for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.etcd_cluster import free_port


class ReplicaProc:
    def __init__(
        self, name: str, endpoints: str, root_key: Path, log_dir: Path, *, ttl: float = 10.0
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.root_key = root_key
        self.port = free_port()
        self.ttl = ttl
        self.log_path = log_dir / f"replica-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReplicaProc:
        argv = [
            sys.executable, "-m", "cryptvol.cli.keys", "serve-replica",
            "--name", self.name,
            "--etcd-endpoints", self.endpoints,
            "--root-key", str(self.root_key),
            "--health", f"127.0.0.1:{self.port}",
            "--interval", "0.3",
            "--ttl", str(self.ttl),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def ready(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/status")[1]))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"replica {self.name} died: {self.log_path.read_text()[-3000:]}"
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"replica {self.name} not ready after {timeout}s")

    def wait_report(self, report: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            try:
                seen = self.status()["report"]
                if seen == report:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"replica {self.name} reports {seen}, not {report}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(timeout=20) == 0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
