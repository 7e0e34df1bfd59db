"""The `cryptvol` command: one group, each subcommand in its own module.

A subcommand's module is imported only when that subcommand runs (or its help is shown):
`cryptvol --help` lists them from the table below, so a command that needs neither pydantic
nor gRPC never pays for them. tests/unit/cli checks the table against the commands.
"""

from __future__ import annotations

import importlib

import click

from cryptvol.cli.failures import CryptvolGroup, exit_codes_help

# name: (module, attribute, its help's first sentence, which `cryptvol --help` shows)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("cryptvol.cli.demo", "demo_command",
             "Create, stage, publish, write, restage, verify, expand and delete one volume."),
    "doctor": ("cryptvol.cli.doctor", "doctor_command",
               "Probe this host and the driver's pools for what cryptvol needs and say what "
               "to fix."),
    "keys": ("cryptvol.cli.keys", "keys_group",
             "KEK rotation, key backup and key-manager replicas."),
    "kms": ("cryptvol.cli.kms", "kms_group",
            "The Kubernetes KMS v2 plugin (encrypts Secrets at rest with cryptvol's KEKs)."),
    "serve": ("cryptvol.cli.serve", "serve_command",
              "Serve the CSI Identity, Controller and Node services on a unix socket."),
    "state": ("cryptvol.cli.state", "state_group",
              "The state store: consistent backups, restoring one, consistency checks."),
    "vm": ("cryptvol.cli.vm", "vm_group",
           "A throwaway VM with a real kernel (dm-crypt, LVM thin, loop) for node work."),
    "volume": ("cryptvol.cli.volume", "volume_group", "Inspect volumes through a running driver."),
}


class LazyGroup(CryptvolGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click's own, from the table instead of the imported commands.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        with formatter.section("Commands"):
            formatter.write_dl([
                (name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit))
                for name in sorted(COMMANDS)
            ])


@click.group(cls=LazyGroup, epilog=exit_codes_help())
@click.version_option(package_name="cryptvol", prog_name="cryptvol")
def cli() -> None:
    """Encrypted persistent volumes for Kubernetes (LUKS2 CSI driver)."""


def main() -> None:
    cli()
