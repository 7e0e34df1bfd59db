"""The test tree itself: pytest imports test modules by basename (rootdir-relative, no
packages), so two files with one name anywhere under tests/ stop collection of the whole run."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_basename_of_its_own() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if ".venv" not in p.parts)
    assert [name for name, count in names.items() if count > 1] == []
