"""Host probes as data: the policy decides from a HostProbe, so tests describe hosts with one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cryptvol.luks.probe import HostProbe, PbkdfCheck

MakeHost = Callable[..., HostProbe]
_NO_ARGON2 = "Not compatible PBKDF options."


def host_probe(
    *,
    argon2: bool = True,
    fips: bool = False,
    luks2: bool = True,
    keyring: bool = True,
    workqueue_flags: bool = True,
    memory_kib: int = 16 * 1024 * 1024,
    **extra: Any,
) -> HostProbe:
    """A probe like the ones real hosts give: a stock Debian node by default; argon2=False
    is Google's COS; fips=True a FIPS-mode node (argon2 refused)."""
    has_argon2 = argon2 and not fips
    pbkdfs = (
        PbkdfCheck(name="pbkdf2", available=luks2),
        PbkdfCheck(
            name="argon2i", available=has_argon2 and luks2, detail="" if has_argon2 else _NO_ARGON2
        ),
        PbkdfCheck(
            name="argon2id", available=has_argon2 and luks2, detail="" if has_argon2 else _NO_ARGON2
        ),
    )
    perf: tuple[str, ...] = ("allow_discards", "same_cpu_crypt", "submit_from_crypt_cpus")
    if workqueue_flags:
        perf += ("no_read_workqueue", "no_write_workqueue")
    fields: dict[str, Any] = {
        "probed_at": "2026-01-01T00:00:00+00:00",
        "kernel_release": "6.1.0-28-amd64" if workqueue_flags else "5.4.0-1-amd64",
        "cryptsetup_version": "2.6.1" if luks2 else "1.7.3",
        "cryptsetup_flags": ("UDEV", "BLKID", "KEYRING", "KERNEL_CAPI"),
        "luks2": luks2,
        "luks2_detail": "formatted a LUKS2 header" if luks2 else "LUKS1 works but LUKS2 does not",
        "pbkdfs": pbkdfs,
        "fips": fips,
        "dm_crypt": True,
        "dm_crypt_version": (1, 24, 0) if workqueue_flags else (1, 19, 0),
        "perf_flags": perf,
        "perf_flags_detail": "crypt target v1.24.0" if workqueue_flags else "crypt target v1.19.0",
        "keyring": keyring,
        "keyring_detail": "kernel keyring accepts logon keys"
        if keyring
        else "add_key refused: Operation not permitted",
        "memory_total_kib": memory_kib,
        "memory_available_kib": memory_kib // 2,
    }
    fields.update(extra)
    return HostProbe.model_validate(fields)


@pytest.fixture
def make_host() -> MakeHost:
    return host_probe
