"""The `cryptvol` command: one group, each subcommand in its own module."""

from __future__ import annotations

import click

from cryptvol.cli.demo import demo_command
from cryptvol.cli.doctor import doctor_command
from cryptvol.cli.failures import CryptvolGroup, exit_codes_help
from cryptvol.cli.keys import keys_group
from cryptvol.cli.kms import kms_group
from cryptvol.cli.serve import serve_command
from cryptvol.cli.state import state_group
from cryptvol.cli.vm import vm_group
from cryptvol.cli.volume import volume_group


@click.group(cls=CryptvolGroup, epilog=exit_codes_help())
@click.version_option(package_name="cryptvol", prog_name="cryptvol")
def cli() -> None:
    """Encrypted persistent volumes for Kubernetes (LUKS2 CSI driver)."""


for command in (serve_command, demo_command, doctor_command, volume_group, keys_group,
                kms_group, state_group, vm_group):
    cli.add_command(command)


def main() -> None:
    cli()
