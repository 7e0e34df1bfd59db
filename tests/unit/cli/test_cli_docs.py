"""README.md says what the CLI does: its settings table and exit codes are generated from
the commands themselves and compared here, so the page cannot drift from `--help`.

When a test here fails after you added an option to `serve`, paste the table it prints
into README.md."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from cryptvol.cli.config import ServeSettings, option_envvar
from cryptvol.cli.failures import EXIT_CODES
from cryptvol.cli.main import cli
from cryptvol.cli.serve import serve_command

README = Path(__file__).resolve().parents[3] / "README.md"


def _options() -> list[click.Option]:
    return [p for p in serve_command.params if isinstance(p, click.Option) and p.name != "help"]


def settings_table() -> str:
    rows = ["| flag | environment variable | `[serve]` key | default | what it sets |",
            "|---|---|---|---|---|"]
    ctx = click.Context(serve_command)
    for option in _options():
        flags = " / ".join(f"`{o}`" for o in [*option.opts, *option.secondary_opts])
        key = f"`{option.name}`" if option.expose_value else "-"
        default = option.get_default(ctx, call=False)
        if isinstance(default, bool):
            default = str(default).lower()
        # None, "" and click's "unset" marker all mean: no default to show.
        shown = f"`{default}`" if isinstance(default, str | int | float) and default != "" else ""
        rows.append(f"| {flags} | `{option_envvar(option)}` | {key} | {shown} | {option.help} |")
    return "\n".join(rows)


def exit_codes_table() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(rows)


def test_every_serve_option_has_help_and_names_its_environment_variable() -> None:
    help_text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for option in _options():
        assert option.help, f"{option.opts[0]} has no help text"
        envvar = option_envvar(option)
        assert envvar == f"CRYPTVOL_{option.name.upper()}", envvar  # type: ignore[union-attr]
        assert envvar in " ".join(help_text.split()), f"--help does not name {envvar}"


def test_every_serve_option_is_a_settings_field_and_a_config_key() -> None:
    names = {o.name for o in _options() if o.expose_value}
    assert names == set(ServeSettings.model_fields)


def test_the_readme_settings_table_is_the_commands() -> None:
    expected = settings_table()
    assert expected in README.read_text(), f"README.md needs this table:\n{expected}"


def test_the_readme_exit_codes_are_the_clis() -> None:
    expected = exit_codes_table()
    assert expected in README.read_text(), f"README.md needs this table:\n{expected}"


if __name__ == "__main__":
    print(settings_table(), exit_codes_table(), sep="\n\n")
