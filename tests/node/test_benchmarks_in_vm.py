"""The benchmarks that need dm-crypt run here (inside the test VM), in a size of seconds of
emulated CPU, so a moved module or a renamed flag fails CI instead of rotting. Only that each
ran and printed its figures is checked."""

from __future__ import annotations

import pytest

from support.benchmarks import IN_VM, run_bench


@pytest.mark.parametrize(("script", "args", "printed"), IN_VM,
                         ids=lambda value: value if isinstance(value, str) else None)
def test_the_benchmark_runs_and_prints_its_figures(script, args, printed):
    out = run_bench(script, *args)
    for text in printed:
        assert text in out, out
