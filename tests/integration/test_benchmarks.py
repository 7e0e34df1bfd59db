"""Every benchmark under bench/ that runs on this host runs here, in a size of seconds, so a
moved module or a renamed flag fails CI instead of rotting. Only that it ran and printed its
figures is checked: the figures themselves are for people (README, "Benchmarks").
tests/node/test_benchmarks_in_vm.py does the same for those that need dm-crypt."""

from __future__ import annotations

import pytest

from support.benchmarks import IN_VM, ON_HOST, ROOT, run_bench


@pytest.mark.parametrize(("script", "args", "printed"), ON_HOST,
                         ids=lambda value: value if isinstance(value, str) else None)
def test_the_benchmark_runs_and_prints_its_figures(script, args, printed):
    out = run_bench(script, *args, timeout=1200)
    for text in printed:
        assert text in out, out


def test_every_script_under_bench_runs_in_ci():
    scripts = {p.name for p in (ROOT / "bench").glob("bench_*.py")}
    assert scripts == {run[0] for run in (*ON_HOST, *IN_VM)}
