"""The config file's `[serve]` table as `serve` reads it, and what `volume` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.cli.config import load_config_file
from cryptvol.cli.failures import ConfigError
from cryptvol.cli.volume import human_size


def _load(tmp_path: Path, text: str) -> dict[str, object]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config_file(path)


def test_keys_come_back_as_fields_whichever_spelling(tmp_path: Path) -> None:
    loaded = _load(tmp_path, "[serve]\nstate-dir = '/s'\npool_dir = '/p'\nlog-json = true\n")
    assert loaded == {"state_dir": "/s", "pool_dir": "/p", "log_json": True}


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert _load(tmp_path, "# nothing yet\n") == {}


@pytest.mark.parametrize(("text", "message"), [
    ("[serve]\nstatedir = '/s'\n", "unknown key 'statedir' in [serve] (did you mean state_dir?)"),
    ("[Serve]\n", "unknown table [Serve] (did you mean [serve]?)"),
    ("[keys]\n", "unknown table [keys]; cryptvol reads only [serve]"),
    ("serve = 1\n", "serve must be a table"),
    ("[serve]\nrole = 'nodes'\n", "[serve] role: Input should be 'all', 'controller' or 'node'"),
])
def test_a_wrong_table_or_key_names_itself(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (512, "512 B"), (64 << 20, "64 MiB"), (1536 << 20, "1.5 GiB"), (3 << 40, "3 TiB"),
])
def test_sizes_are_shown_in_binary_units(size: int, shown: str) -> None:
    assert human_size(size) == shown
