"""Every benchmark under bench/ that runs on this host runs here, in a size of seconds, so a
moved module or a renamed flag fails CI instead of rotting. Only that it ran and printed its
figures is checked: the figures themselves are for people (README, "Benchmarks").
tests/node/test_benchmarks.py does the same for those that need dm-crypt."""

from __future__ import annotations

import pytest

from support.benchmarks import run_bench


@pytest.mark.parametrize(("script", "args", "printed"), [
    ("bench_csi.py", ["controller", "--pairs", "8", "--clients", "1,2"],
     ["cryptvol  1 client(s)", "cryptvol  2 client(s)", "pairs/s", "CPU"]),
    ("bench_rewrap.py", ["--deks", "300"],
     ["== SQLite: 300 DEKs", "== etcd", "re-wrap (reencrypt)", "status CLI process"]),
    ("bench_kms.py", ["--seconds", "0.3", "--callers", "1,2"], ["Encrypt", "Decrypt", "ops/s"]),
    ("bench_unlock.py", ["--smoke", "--repeat", "1", "--defaults-repeat", "1", "--parallel", "2"],
     ["managed pbkdf2-min", "parallel unlocks"]),
    ("bench_image.py", ["--smoke"], ["build wall time", "image size"]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_the_benchmark_runs_and_prints_its_figures(script, args, printed):
    out = run_bench(script, *args, timeout=1200)
    for text in printed:
        assert text in out, out
