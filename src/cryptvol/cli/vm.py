"""`cryptvol vm`: run a command in the real-kernel test VM, and check its parts."""

from __future__ import annotations

import sys

import click

# The exit code when the VM itself failed, so it is not mistaken for the command's.
VM_FAILED_EXIT = 125
# Parts whose absence is information, not a fault.
_INFORMATIONAL = {"kernel cached", "initramfs cached", "zfs module cached", "kvm usable",
                  "dm-crypt on host"}


@click.group("vm")
def vm_group() -> None:
    """A throwaway VM with a real kernel (dm-crypt, LVM thin, loop) for node work."""


@vm_group.command("run", context_settings={"ignore_unknown_options": True})
@click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds from boot until the VM is killed.",
)
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder to run in (default: the current one).",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Add to the command's environment (repeatable).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Host folder the guest may write to, at the same path (default: a temporary one).",
)
@click.option("--memory", type=int, default=None, help="Guest memory in MiB.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(
    timeout: float,
    cwd: str | None,
    env_pairs: tuple[str, ...],
    work_dir: str | None,
    memory: int | None,
    command: tuple[str, ...],
) -> None:
    """Boot the VM, run COMMAND as root in this host's root, exit with its exit code.

    The host is read-only in the guest except the work folder; /tmp is the guest's own.
    """
    from cryptvol.vm import VmError, VmUnavailable, run_in_vm  # imported here: others start faster

    env: dict[str, str] = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--env")
        env[name] = value
    try:
        code = run_in_vm(
            list(command), cwd=cwd, env=env, timeout=timeout, work_dir=work_dir, memory_mib=memory
        )
    except (VmError, VmUnavailable) as exc:
        click.echo(f"cryptvol vm run: {exc}", err=True)
        sys.exit(VM_FAILED_EXIT)
    sys.exit(code)


@vm_group.command("kernel-release")
def kernel_release_command() -> None:
    """Print the release of the kernel the VM boots (what its modules are built for)."""
    from cryptvol.vm import VmUnavailable, resolve_cache_dir
    from cryptvol.vm.parts import resolve_kernel_release

    try:
        click.echo(resolve_kernel_release(resolve_cache_dir()))
    except VmUnavailable as exc:
        click.echo(f"cryptvol vm kernel-release: {exc}", err=True)
        sys.exit(1)


@vm_group.command("doctor")
@click.option("--build", is_flag=True, help="Fetch and build the kernel and initramfs first.")
def doctor_command(build: bool) -> None:
    """Say which parts of the VM are present and cached; exit 1 if one is missing."""
    from cryptvol.vm import VmUnavailable, doctor, ensure_parts

    if build:
        try:
            parts = ensure_parts()
        except VmUnavailable as exc:
            click.echo(f"cannot build the VM parts: {exc}", err=True)
        else:
            click.echo(f"built in {parts.seconds:.1f} s" if parts.built else "already built")
    checks = doctor()
    width = max(len(c.part) for c in checks)
    missing = False
    for check in checks:
        if check.present:
            mark = "yes"
        else:
            mark = "no" if check.part in _INFORMATIONAL else "MISSING"
            missing = missing or check.part not in _INFORMATIONAL
        click.echo(f"{check.part:<{width}}  {mark:<7}  {check.detail}")
    sys.exit(1 if missing else 0)
