"""The `cryptvol` command: one group, each subcommand in its own module."""

from __future__ import annotations

import click

from cryptvol import __version__
from cryptvol.cli.demo import demo_command
from cryptvol.cli.serve import serve_command
from cryptvol.cli.volume import volume_group


@click.group()
@click.version_option(__version__, prog_name="cryptvol")
def cli() -> None:
    """Encrypted persistent volumes for Kubernetes (LUKS2 CSI driver)."""


cli.add_command(serve_command)
cli.add_command(demo_command)
cli.add_command(volume_group)


def main() -> None:
    cli()
