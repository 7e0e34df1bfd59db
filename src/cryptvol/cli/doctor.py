"""`cryptvol doctor`: what this host's cryptsetup, kernel and pools can do, and what to fix.

One line per finding with a verdict (ok, warn, fail; skip for a check that needs what
failed) and, for each problem, what to do; then the overall verdict. Pools are the ones
`cryptvol serve` would configure (`--pool`, `--pool-dir`, `--config`, or their CRYPTVOL_*
variables): each is reported with its free space and the encryption it applies beneath
LUKS2, if any. `--json` prints the same, plus the raw probe (the one the driver caches).
Exit code: 0 when nothing failed, 1 when a check failed (the driver cannot work here).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from cryptvol.errors import CryptvolError

if TYPE_CHECKING:  # imported where used: the CLI starts faster without pydantic's models
    from cryptvol.luks.probe import HostProbe
    from cryptvol.pools.base import Pool
    from cryptvol.pools.registry import PoolSpec

Verdict = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    verdict: Verdict
    advice: str = ""


def checks(host: HostProbe) -> list[Check]:
    """The doctor's findings for a probe, in the order a reader wants them."""
    found: list[Check] = []
    if host.cryptsetup_version is None:
        found.append(Check("cryptsetup", "missing", "fail",
                           "install cryptsetup 2.1 or newer (Debian/Ubuntu: cryptsetup-bin)"))
    else:
        flags = " ".join(host.cryptsetup_flags)
        found.append(Check("cryptsetup", f"{host.cryptsetup_version} ({flags})", "ok"))
    found.append(Check(
        "luks2", "available" if host.luks2 else "unavailable",
        "ok" if host.luks2 else "fail",
        "" if host.luks2 else f"{host.luks2_detail}; install cryptsetup 2.1 or newer",
    ))
    pbkdf2 = host.pbkdf_available("pbkdf2")
    found.append(Check(
        "pbkdf2", "available" if pbkdf2 else "unavailable", "ok" if pbkdf2 else "fail",
        "" if pbkdf2 else f"{host.pbkdf_detail('pbkdf2')}; cryptvol needs pbkdf2",
    ))
    argon2 = [name for name in ("argon2id", "argon2i") if host.pbkdf_available(name)]
    if argon2:
        found.append(Check("argon2", f"available ({', '.join(argon2)})", "ok"))
    else:
        refused = host.pbkdf_detail("argon2id") or "refused"
        cause = "FIPS mode" if host.fips else refused.rstrip(".")
        found.append(Check(
            "argon2", "unavailable", "warn",
            f"{cause}. Managed-key volumes are unaffected (pbkdf2); passphrase volumes fall "
            "back to pbkdf2, or are refused where pbkdfFallback is false. For argon2 use a "
            "cryptsetup built with it (internal argon2 or libargon2)",
        ))
    found.append(Check(
        "fips", "on" if host.fips else "off", "ok",
        "argon2 is refused in FIPS mode; pbkdf2 is used" if host.fips else "",
    ))
    found.append(Check(
        "dm-crypt", "present" if host.dm_crypt else "absent",
        "ok" if host.dm_crypt else "fail",
        "" if host.dm_crypt else f"{host.dm_crypt_detail}; load dm_crypt (modprobe dm_crypt) "
        "or run on a kernel with device-mapper: volumes cannot be opened here",
    ))
    found.append(_kernel_crypto(host))
    found.append(Check(
        "keyring", "usable" if host.keyring else "unusable", "ok" if host.keyring else "warn",
        "" if host.keyring else f"{host.keyring_detail}; volume keys will sit in the dm "
        "table (readable by root with dmsetup table --showkeys); allow add_key/keyctl in "
        "the driver's seccomp profile",
    ))
    workqueue = "no_read_workqueue" in host.perf_flags
    if not host.dm_crypt:
        found.append(Check("perf flags", "not checked", "skip", "they need dm-crypt"))
    else:
        found.append(Check(
            "perf flags", ", ".join(host.perf_flags) or "none",
            "ok" if workqueue else "warn",
            "" if workqueue else f"{host.perf_flags_detail}; perfNoRead/WriteWorkqueue are "
            "left out on this node (kernel 5.9+ accepts them)",
        ))
    found.append(_memory(host))
    return found


def _kernel_crypto(host: HostProbe) -> Check:
    if not host.crypto_aes_drivers:
        return Check("kernel crypto", "no aes in /proc/crypto", "warn",
                     "load the aes and xts modules (dm-crypt loads them on first open)")
    value = f"aes: {', '.join(host.crypto_aes_drivers)}"
    if host.crypto_xts_drivers:
        value += f"; xts: {', '.join(host.crypto_xts_drivers)}"
    if host.crypto_accelerated:
        return Check("kernel crypto", value + " (accelerated)", "ok")
    if host.cpu_aes:
        return Check("kernel crypto", value, "warn",
                     "the CPU has AES instructions but no accelerated driver is loaded: "
                     "modprobe aesni_intel (x86) or aes_ce_blk (arm64) for fast I/O")
    return Check("kernel crypto", value, "warn",
                 "no AES acceleration: encrypted I/O costs CPU time; prefer nodes "
                 "whose CPUs have AES instructions")


def _memory(host: HostProbe) -> Check:
    from cryptvol.luks.budget import default_budget_kib

    total = host.usable_memory_kib
    budget = default_budget_kib(host)
    value = f"{total // 1024} MiB usable, unlock budget {budget // 1024} MiB"
    if host.cgroup_memory_limit_kib:
        value += f" (cgroup limit {host.cgroup_memory_limit_kib // 1024} MiB)"
    if budget < 1024 * 1024 and host.argon2:
        return Check("memory", value, "warn",
                     "argon2 passphrase volumes get their PBKDF memory capped to the budget; "
                     "unlocks wait their turn when many volumes stage at once")
    return Check("memory", value, "ok")


def overall(found: list[Check]) -> Verdict:
    """fail when any check failed (no volume can work here), warn when any warned, else ok."""
    for verdict in ("fail", "warn"):
        if any(c.verdict == verdict for c in found):
            return verdict
    return "ok"


def verdict_line(found: list[Check]) -> str:
    verdict = overall(found)
    names = ", ".join(c.name for c in found if c.verdict == verdict)
    if verdict == "fail":
        return f"verdict: FAIL ({names}): cryptvol cannot serve volumes here until fixed"
    if verdict == "warn":
        return f"verdict: OK, with warnings ({names})"
    return "verdict: OK"


# What LUKS2 over a natively encrypted ZFS dataset costs, stated rather than measured on
# each node (doctor writes nothing to a pool). bench/bench_zfs.py measures it in the VM.
DOUBLE_ENCRYPTION_COST = (
    "LUKS2 on top encrypts every block twice (dm-crypt AES-XTS, then ZFS {cipher}): about "
    "twice the CPU per byte written or read, for no added secrecy; ZFS compression and "
    "dedup see only ciphertext either way. Prefer a dataset without native encryption for "
    "cryptvol pools (bench/bench_zfs.py measures the cost)"
)


def pool_checks(specs: Sequence[PoolSpec]) -> list[Check]:
    """One line per configured pool (what it is, its space) and, where the pool can encrypt
    beneath LUKS, one on that encryption."""
    if not specs:
        return [Check("pools", "none given", "ok",
                      "pass the driver's --pool/--pool-dir/--config to check its pools")]
    from cryptvol.pools.registry import open_pools

    try:
        pools = open_pools(specs).all()
    except CryptvolError as exc:
        return [Check("pools", "cannot be opened", "fail", str(exc))]
    found = []
    for pool in pools:
        found.extend(_pool_checks(pool))
    return found


def _pool_checks(pool: Pool) -> list[Check]:
    label = f"pool {pool.name}"
    what = f"{pool.kind}:{pool.location}"
    try:
        space = pool.provisioner.space()
    except CryptvolError as exc:
        return [Check(label, what, "fail", str(exc))]
    found = [Check(label, f"{what}, {space.free_bytes // 2**20} MiB free", "ok")]
    if pool.encryption is None:
        return found
    state = pool.encryption()
    name = f"{label} encryption"
    if state.cipher == "off":
        found.append(Check(name, "none beneath LUKS2", "ok"))
    elif not state.key_loaded:
        found.append(Check(name, f"{state.cipher} (root {state.root}, key not loaded)", "fail",
                           f"run `zfs load-key {state.root}`"))
    else:
        found.append(Check(name, f"{state.cipher} (root {state.root}, key loaded)", "warn",
                           DOUBLE_ENCRYPTION_COST.format(cipher=state.cipher)))
    return found


def render_table(found: list[Check]) -> str:
    labels = [f"{c.name}: {c.value}" for c in found]
    width = min(max(len(label) for label in labels), 72)
    lines = []
    for label, check in zip(labels, found, strict=True):
        line = f"{label.ljust(width)}  {check.verdict.upper():4}"
        if check.advice:
            line += f"  {check.advice}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _load_defaults(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    from cryptvol.cli.config import load_config_file

    if value is not None:
        table = load_config_file(value)
        ctx.default_map = {k: v for k, v in table.items() if k in ("pool", "pool_dir")}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="print the probe and checks as JSON")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False),
              envvar="CRYPTVOL_CONFIG", callback=_load_defaults, is_eager=True,
              expose_value=False, help="The driver's TOML file; its pools are checked.")
@click.option("--pool", envvar="CRYPTVOL_POOL", multiple=True,
              help="A pool as `cryptvol serve` takes it (NAME=KIND:LOCATION); repeatable.")
@click.option("--pool-dir", envvar="CRYPTVOL_POOL_DIR", type=click.Path(path_type=Path),
              default=None, help="The driver's one loop pool, as `cryptvol serve` takes it.")
def doctor_command(as_json: bool, pool: tuple[str, ...], pool_dir: Path | None) -> None:
    """Probe this host and the driver's pools for what cryptvol needs and say what to fix."""
    from cryptvol.cli.config import ServeSettings
    from cryptvol.luks.probe import probe_host

    host = probe_host()
    found = checks(host)
    try:
        specs = ServeSettings(pool=tuple(pool), pool_dir=pool_dir).pool_specs() \
            if pool or pool_dir else ()
    except CryptvolError as exc:
        raise click.UsageError(str(exc)) from None
    found += pool_checks(specs)
    if as_json:
        click.echo(json.dumps({
            "verdict": overall(found),
            "checks": [asdict(c) for c in found],
            "probe": json.loads(host.to_json()),
        }, indent=2))
    else:
        click.echo(render_table(found))
        click.echo(f"{verdict_line(found)}   (probed in {host.seconds:.1f} s)")
    if overall(found) == "fail":
        raise SystemExit(1)
