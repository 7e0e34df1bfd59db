"""`cryptvol doctor`: what this host's cryptsetup and kernel can do, and what to fix.

One line per finding with a verdict (ok, warn, fail; skip for a check that needs what
failed) and, for each problem, what to do; then the overall verdict. `--json` prints the
same, plus the raw probe (the one the driver caches).
Exit code: 0 when nothing failed, 1 when a check failed (the driver cannot work here).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import click

if TYPE_CHECKING:  # imported where used: the CLI starts faster without pydantic's models
    from cryptvol.luks.probe import HostProbe

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


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="print the probe and checks as JSON")
def doctor_command(as_json: bool) -> None:
    """Probe this host for what cryptvol needs and say what to fix."""
    from cryptvol.luks.probe import probe_host

    host = probe_host()
    found = checks(host)
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
