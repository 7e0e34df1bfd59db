"""`cryptvol` imports a subcommand's module only when that subcommand runs: `--help` and
`keys status` start in well under a second, with no gRPC, pydantic or cryptography loaded."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from cryptvol.cli.main import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_names_each_command_and_its_help_as_the_command_does(name: str) -> None:
    module, attribute, help_line = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert command.name == name
    assert command.get_short_help_str(10_000) == help_line


_LOADED = """
import sys
from cryptvol.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="cryptvol")
except SystemExit:
    pass
heavy = [m for m in ("grpc", "pydantic", "cryptography", "prometheus_client") if m in sys.modules]
print("HEAVY", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["keys", "status", "--help"], ["keys", "--help"]])
def test_help_and_keys_status_load_no_heavy_library(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", _LOADED, *argv], capture_output=True,
                          text=True, timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr
    assert "Usage: cryptvol" in done.stdout


def test_keys_status_of_a_store_loads_no_heavy_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptvol.keys.manager import open_local

    store, _ = open_local(tmp_path)
    store.close()
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, "keys", "status", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert "HEAVY []" in done.stderr, done.stderr
    assert "stage:" in done.stdout
