"""Run the real KMS plugin (`cryptvol kms serve`) as a child process and call it over its
unix socket, as kube-apiserver does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptvol.kms.client import KmsClient
from support.processes import stop_server


def keys_cli(
    *args: str, store_args: list[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `cryptvol keys ARGS STORE_ARGS` as a process, the way an operator does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "keys", *args, *store_args],
        capture_output=True, text=True, env=env, timeout=180,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@dataclass
class RunningKms:
    work: Path
    name: str = "kms-a"
    store_args: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    log_level: str = "debug"
    proc: subprocess.Popen[bytes] | None = None
    client: KmsClient | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.work}/{self.name}.sock"

    @property
    def log_path(self) -> Path:
        return self.work / f"{self.name}.log"

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> KmsClient:
        argv = [
            sys.executable, "-m", "cryptvol", "kms", "serve",
            "--listen", self.endpoint, "--name", self.name,
            "--interval", "0.2", "--log-json", "--log-level", self.log_level,
            *self.store_args, *self.extra_args,
        ]  # fmt: skip
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
        child_env.update(env or {})
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=child_env)
        log.close()
        self.client = KmsClient(self.endpoint)
        if wait:
            self.client.wait_healthy(60)
        return self.client

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is None:
            return 0
        code = stop_server(self.proc, "the KMS plugin", lambda: self.log_text()[-6000:])
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
