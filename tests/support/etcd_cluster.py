"""Real etcd members on loopback ports, for tests and the benchmark.

Each member is Debian's `/usr/bin/etcd` (package etcd-server) with its own temporary data
dir and free 127.0.0.1 ports; `stop()` and `start()` restart one member with its data, the
way a node reboot does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.tls_certs import TlsFiles

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    def __init__(
        self, root: Path, size: int = 1, *, max_txn_ops: int = 128, tls: TlsFiles | None = None
    ) -> None:
        """With `tls`, clients must speak https and show a certificate the CA signed."""
        self.root = root
        self.tls = tls
        root.mkdir(parents=True, exist_ok=True)
        self.max_txn_ops = max_txn_ops
        self.members = [
            Member(
                name=f"m{i}",
                data_dir=root / f"m{i}",
                client_port=free_port(),
                peer_port=free_port(),
                log_path=root / f"m{i}.log",
                scheme="https" if tls else "http",
            )
            for i in range(size)
        ]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def start(self, wait: bool = True) -> EtcdCluster:
        for m in self.members:
            self.start_member(m, wait=False)
        if wait:
            for m in self.members:
                self.wait_healthy(m)
        return self

    def start_member(self, m: Member, *, wait: bool = True) -> None:
        argv = [
            ETCD,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self._initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"cryptvol-test-{os.getpid()}",
            "--max-txn-ops", str(self.max_txn_ops),
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--client-cert-auth",
                "--trusted-ca-file", str(self.tls.ca),
            ]  # fmt: skip
        log = open(m.log_path, "ab")  # noqa: SIM115 - the child keeps it
        m.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_healthy(m)

    def stop_member(self, m: Member, sig: int = signal.SIGTERM) -> None:
        if m.proc is None:
            return
        if m.proc.poll() is None:
            m.proc.send_signal(sig)
            try:
                m.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.proc = None

    def restart_member(self, m: Member) -> None:
        self.stop_member(m)
        self.start_member(m)

    def wait_healthy(self, m: Member, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"etcd {m.name} exited: {m.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(
                    m.client_url + "/health", timeout=2, context=self._ssl_context()
                ) as r:
                    body = r.read().decode()
                if '"true"' in body:
                    return
                last = body
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"etcd {m.name} not healthy after {timeout}s: {last}")

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)
