"""Run a script under bench/ as a process, the way its docstring says to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 900) -> str:
    """Run bench/`script` with `args`; return what it printed (it must exit 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    env.update({k: v for k, v in os.environ.items() if k == "CRYPTVOL_IN_VM"})
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
