"""Run a script under bench/ as a process, the way its docstring says to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
Run = tuple[str, list[str], list[str]]  # script, its smoke-size arguments, what it prints

# The benchmarks that run on this host (tests/integration/test_benchmarks.py).
ON_HOST: list[Run] = [
    ("bench_csi.py", ["controller", "--pairs", "8", "--clients", "1,2"],
     ["cryptvol  1 client(s)", "cryptvol  2 client(s)", "pairs/s", "CPU", "ceiling   2 client(s)",
      "2 client(s): cryptvol / ceiling"]),
    ("bench_rewrap.py", ["--deks", "300"],
     ["== SQLite: 300 DEKs", "== etcd", "re-wrap (reencrypt)", "status CLI process"]),
    ("bench_kms.py", ["--seconds", "0.3", "--callers", "1,2"], ["Encrypt", "Decrypt", "ops/s"]),
    ("bench_unlock.py", ["--smoke", "--repeat", "1", "--defaults-repeat", "1", "--parallel", "2"],
     ["managed pbkdf2-min", "parallel unlocks"]),
    ("bench_image.py", ["--smoke"], ["build wall time", "image size"]),
    ("bench_hostile.py", [], ["NodeUnpublishVolume", "total", "right code with nothing changed"]),
]
# The benchmarks that need dm-crypt, run in the VM (tests/node/test_benchmarks_in_vm.py).
IN_VM: list[Run] = [
    ("bench_node.py", ["stage", "--rounds", "2", "--size-mib", "32"],
     ["plain stage", "luks stage", "driver stage", "driver / plain"]),
    ("bench_node.py", ["restage", "--volumes", "2"],
     ["2 managed volumes staged at once", "2 plain volumes"]),
    ("bench_csi.py", ["expand", "--sizes-gib", "1", "--fs", "ext4"], ["online NodeExpandVolume"]),
    ("bench_kata.py", ["--smoke"], ["NodePublish"]),
    ("bench_zfs.py", ["--repeat", "1", "--written-mib", "8", "--throughput-mib", "8"],
     ["snapshot of a zvol", "zfs clone", "with LUKS2"]),
    ("bench_snapshots.py", ["--smoke"], ["CreateSnapshot", "first stage", "cloneReencrypt"]),
]


def run_bench(script: str, *args: str, timeout: float = 900) -> str:
    """Run bench/`script` with `args`; return what it printed (it must exit 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    env.update({k: v for k, v in os.environ.items() if k == "CRYPTVOL_IN_VM"})
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
