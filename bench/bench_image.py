"""Benchmark: the OCI image's size and the wall time of its build, cold and warm.

Prints numbers, asserts nothing. Runs deploy/image/build.sh (as root) twice:
  1. cold: an empty cache directory and no pip cache, as on a fresh CI machine (every
     Debian package and wheel is downloaded, the root filesystem bootstrapped);
  2. warm: the same cache again, as every later build on that machine (only cryptvol's
     own layer is rebuilt).
Then the size: the compressed blobs a registry stores and a node pulls, and unpacked.

    .venv/bin/python bench/bench_image.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "deploy" / "image" / "build.sh"


def build(cache: Path, out: Path) -> tuple[float, str]:
    env = dict(os.environ, CRYPTVOL_IMAGE_CACHE=str(cache), PIP_NO_CACHE_DIR="1",
               PYTHON=sys.executable)
    start = time.monotonic()
    done = subprocess.run(["bash", str(BUILD), str(out)], env=env, capture_output=True,
                          text=True)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"build failed:\n{done.stdout}\n{done.stderr}")
    size = next(line for line in done.stdout.splitlines() if line.startswith("image size:"))
    return elapsed, size


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cryptvol-image-bench.") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "oci"
        cold, size = build(cache, out)
        warm, _ = build(cache, out)
    print(f"build wall time: cold {cold:.1f} s (empty cache), warm {warm:.1f} s (cached "
          "Debian root filesystem and wheels)")
    print(size)


if __name__ == "__main__":
    main()
