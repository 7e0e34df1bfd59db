"""What this host's cryptsetup and kernel can really do, found by trying, not by version.

`probe_host()` runs once at driver start (and for `cryptvol doctor`); the result is a
JSON-serializable `HostProbe` the engine caches in the state store and hands to
`cryptvol.luks.policy.plan`. Every PBKDF is proven by formatting a small header file with it
at the lowest cost cryptsetup accepts: a build without argon2 (Google's COS) or a FIPS-mode
library refuses there with "Not compatible PBKDF options." whatever its version number says.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cryptvol.system import run
from cryptvol.system.runner import CommandError

CRYPTSETUP = "cryptsetup"
PBKDFS = ("pbkdf2", "argon2i", "argon2id")
MEMORY_HARD = ("argon2id", "argon2i")
# dm-crypt target version that first accepted no_read_workqueue/no_write_workqueue (5.9).
PERF_WORKQUEUE_DM_CRYPT = (1, 22, 0)
PERF_WORKQUEUE_KERNEL = (5, 9)
# The cheapest settings cryptsetup accepts, so a probe format costs milliseconds.
_PROBE_COST = {
    "pbkdf2": ["--pbkdf-force-iterations", "1000"],
    "argon2i": ["--pbkdf-force-iterations", "4", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"],
    "argon2id": ["--pbkdf-force-iterations", "4", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"],
}
_PROBE_BENCHMARK = {
    "pbkdf2": ["--iter-time", "1"],
    "argon2i": ["--iter-time", "1", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"],
    "argon2id": ["--iter-time", "1", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"],
}
_PROBE_HEADER_BYTES = 16 * 1024 * 1024
_PROBE_KEY = b"cryptvol-probe"  # a throwaway key for a throwaway header file
_PROC = Path("/proc")
_SYS_CGROUP = Path("/sys/fs/cgroup")
# add_key(2)/keyctl(2) syscall numbers; the keyring probe is skipped on other machines.
_KEY_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}
_KEYCTL_INVALIDATE = 21
_KEY_SPEC_PROCESS_KEYRING = -2


class PbkdfCheck(BaseModel):
    """Whether cryptsetup formatted a header with this PBKDF, and what it said if not."""

    model_config = ConfigDict(frozen=True)

    name: str
    available: bool
    detail: str = ""


class HostProbe(BaseModel):
    """Everything the LUKS policy needs to know about a host. Serializable as JSON."""

    model_config = ConfigDict(frozen=True)

    probed_at: str
    seconds: float = 0.0
    kernel_release: str = ""
    cryptsetup_version: str | None = None
    cryptsetup_flags: tuple[str, ...] = ()
    cryptsetup_detail: str = ""
    luks2: bool = False
    luks2_detail: str = ""
    pbkdfs: tuple[PbkdfCheck, ...] = ()
    fips: bool = False
    fips_detail: str = ""
    crypto_aes_drivers: tuple[str, ...] = ()
    crypto_xts_drivers: tuple[str, ...] = ()
    crypto_accelerated: tuple[str, ...] = ()
    cpu_aes: bool = False
    dm_crypt: bool = False
    dm_crypt_detail: str = ""
    dm_crypt_version: tuple[int, int, int] | None = None
    perf_flags: tuple[str, ...] = ()
    perf_flags_detail: str = ""
    keyring: bool = False
    keyring_detail: str = ""
    memory_total_kib: int = 0
    memory_available_kib: int = 0
    cgroup_memory_limit_kib: int | None = None

    def pbkdf_available(self, name: str) -> bool:
        return any(c.name == name and c.available for c in self.pbkdfs)

    def pbkdf_detail(self, name: str) -> str:
        for check in self.pbkdfs:
            if check.name == name:
                return check.detail
        return "not probed"

    @property
    def argon2(self) -> bool:
        return any(self.pbkdf_available(name) for name in MEMORY_HARD)

    @property
    def usable_memory_kib(self) -> int:
        """Memory cryptsetup children may use: the node's, or the driver cgroup's if smaller."""
        limits = [m for m in (self.memory_total_kib, self.cgroup_memory_limit_kib) if m]
        return min(limits) if limits else 0

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> HostProbe:
        return cls.model_validate_json(text)


def probe_host() -> HostProbe:
    """Probe this host. Takes well under a second when cryptsetup is present."""
    started = time.monotonic()
    fields: dict[str, object] = {
        "probed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel_release": platform.release(),
    }
    fields.update(_cryptsetup_fields())
    fields.update(_fips_fields())
    fields.update(_crypto_fields())
    fields.update(_dm_crypt_fields(str(fields["kernel_release"])))
    fields.update(_keyring_fields(fields.get("cryptsetup_flags", ())))
    fields.update(_memory_fields())
    fields["seconds"] = round(time.monotonic() - started, 3)
    return HostProbe.model_validate(fields)


def _cryptsetup_fields() -> dict[str, object]:
    try:
        out = run([CRYPTSETUP, "--version"], timeout=10).stdout.strip()
    except CommandError as exc:
        return {"cryptsetup_detail": str(exc), "luks2_detail": f"cryptsetup did not run: {exc}"}
    # "cryptsetup 2.6.1 flags: UDEV BLKID KEYRING KERNEL_CAPI"
    match = re.match(r"cryptsetup\s+(\S+)(?:\s+flags:\s*(.*))?", out)
    version = match.group(1) if match else out
    flags = tuple((match.group(2) or "").split()) if match else ()
    fields: dict[str, object] = {
        "cryptsetup_version": version,
        "cryptsetup_flags": flags,
        "cryptsetup_detail": out,
    }
    with tempfile.TemporaryDirectory(prefix="cryptvol-probe-") as tmp:
        checks = _try_pbkdfs(Path(tmp))
        fields["pbkdfs"] = tuple(checks)
        if any(c.available for c in checks):
            fields["luks2"] = True
            fields["luks2_detail"] = "formatted a LUKS2 header"
        else:
            fields["luks2"] = False
            fields["luks2_detail"] = _luks2_failure(Path(tmp), checks)
    return fields


def _format_header(path: Path, args: list[str]) -> tuple[bool, str]:
    with open(path, "wb") as f:
        f.truncate(_PROBE_HEADER_BYTES)
    result = run(
        [CRYPTSETUP, "luksFormat", "--batch-mode", *args, "--key-file=-", str(path)],
        secret=_PROBE_KEY, check=False, timeout=30,
    )
    if result.returncode == 0:
        return True, ""
    lines = [ln for ln in result.stderr.splitlines() if "too small for activation" not in ln]
    return False, " ".join(lines).strip() or f"exit code {result.returncode}"


def _try_pbkdfs(tmp: Path) -> list[PbkdfCheck]:
    checks: list[PbkdfCheck] = []
    explained: str | None = None
    for name in PBKDFS:
        header = tmp / f"{name}.img"
        ok, detail = _format_header(
            header, ["--type", "luks2", "--pbkdf", name, *_PROBE_COST[name]]
        )
        if not ok and detail.startswith("exit code"):
            # With a forced cost cryptsetup fails silently; its benchmark, at the smallest
            # time and memory, says why ("Not compatible PBKDF options."). That costs ~0.8 s,
            # so it is asked once and the answer reused for the other PBKDFs that failed.
            if explained is None:
                ok, detail = _format_header(
                    header, ["--type", "luks2", "--pbkdf", name, *_PROBE_BENCHMARK[name]]
                )
                explained = detail
            else:
                detail = explained
        checks.append(PbkdfCheck(name=name, available=ok, detail=detail))
    return checks


def _luks2_failure(tmp: Path, checks: list[PbkdfCheck]) -> str:
    luks1_ok, _ = _format_header(tmp / "luks1.img", ["--type", "luks1", *_PROBE_COST["pbkdf2"]])
    reason = checks[0].detail if checks else "no PBKDF probed"
    if luks1_ok:
        return f"LUKS1 works but LUKS2 does not: {reason}"
    return f"cryptsetup cannot format a header: {reason}"


def _fips_fields() -> dict[str, object]:
    path = _PROC / "sys/crypto/fips_enabled"
    try:
        enabled = path.read_text().strip() == "1"
    except OSError:
        return {"fips": False, "fips_detail": "kernel has no FIPS mode switch"}
    return {
        "fips": enabled,
        "fips_detail": "kernel FIPS mode on" if enabled else "kernel FIPS mode off",
    }


def _crypto_fields() -> dict[str, object]:
    aes: list[str] = []
    xts: list[str] = []
    try:
        text = (_PROC / "crypto").read_text()
    except OSError:
        text = ""
    for block in text.split("\n\n"):
        entry = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        name, driver = entry.get("name", ""), entry.get("driver", "")
        if name == "aes":
            aes.append(driver)
        elif name == "xts(aes)":
            xts.append(driver)
    accelerated = sorted(
        {d for d in aes + xts if re.search(r"aesni|-ce\b|vaes|aes-arm64|-neon", d)}
    )
    try:
        cpuinfo = (_PROC / "cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu_aes = bool(re.search(r"^(flags|Features)\s*:.*\baes\b", cpuinfo, re.MULTILINE))
    return {
        "crypto_aes_drivers": tuple(sorted(set(aes))),
        "crypto_xts_drivers": tuple(sorted(set(xts))),
        "crypto_accelerated": tuple(accelerated),
        "cpu_aes": cpu_aes,
    }


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _dm_crypt_fields(release: str) -> dict[str, object]:
    try:
        misc = (_PROC / "misc").read_text()
    except OSError:
        misc = ""
    device_mapper = "device-mapper" in misc or _opens("/dev/mapper/control")
    fields: dict[str, object] = {"dm_crypt": False}
    version: tuple[int, int, int] | None = None
    if not device_mapper:
        fields["dm_crypt_detail"] = "no device-mapper in this kernel (/proc/misc)"
    else:
        version = _dm_crypt_target_version()
        fields["dm_crypt"] = True
        fields["dm_crypt_version"] = version
        fields["dm_crypt_detail"] = (
            "crypt target v{}.{}.{}".format(*version) if version
            else "device-mapper present; crypt target not loaded yet (cryptsetup loads it)"
        )
    if version is not None:
        accepts = version >= PERF_WORKQUEUE_DM_CRYPT
        source = "crypt target v{}.{}.{}".format(*version)
    else:
        accepts = _kernel_version(release) >= PERF_WORKQUEUE_KERNEL
        source = f"kernel {release}"
    perf = ["allow_discards", "same_cpu_crypt", "submit_from_crypt_cpus"]
    if accepts:
        perf += ["no_read_workqueue", "no_write_workqueue"]
    fields["perf_flags"] = tuple(perf)
    fields["perf_flags_detail"] = (
        f"{source}: " + ("workqueue bypass supported" if accepts else "no workqueue bypass")
    )
    return fields


def _opens(path: str) -> bool:
    # A leftover device node without the driver behind it fails with ENODEV.
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError:
        return False
    return True


def _dm_crypt_target_version() -> tuple[int, int, int] | None:
    result = run(["dmsetup", "targets"], check=False, timeout=10)
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        match = re.match(r"crypt\s+v(\d+)\.(\d+)\.(\d+)", line.strip())
        if match:
            return (int(match.group(1)), int(match.group(2)), int(match.group(3)))
    return None


def _keyring_fields(flags: object) -> dict[str, object]:
    if isinstance(flags, tuple) and flags and "KEYRING" not in flags:
        return {"keyring": False, "keyring_detail": "cryptsetup built without KEYRING support"}
    usable, detail = _try_logon_key()
    return {"keyring": usable, "keyring_detail": detail}


def _try_logon_key() -> tuple[bool, str]:
    """Add and drop a throwaway `logon` key, the kind cryptsetup hands dm-crypt. Container
    seccomp profiles often refuse add_key(2): then the volume key must live in the dm table."""
    numbers = _KEY_SYSCALLS.get(platform.machine())
    if numbers is None:
        return Path("/proc/keys").exists(), "not tried on this machine type; /proc/keys checked"
    add_key, keyctl = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    syscall: Callable[..., int] = libc.syscall
    payload = os.urandom(32)
    serial = syscall(
        add_key, b"logon", b"cryptvol:probe", payload, ctypes.c_size_t(len(payload)),
        ctypes.c_int(_KEY_SPEC_PROCESS_KEYRING),
    )
    if serial < 0:
        err = ctypes.get_errno()
        return False, f"add_key refused: {os.strerror(err)}"
    syscall(keyctl, ctypes.c_int(_KEYCTL_INVALIDATE), ctypes.c_int(serial))
    return True, "kernel keyring accepts logon keys"


def _memory_fields() -> dict[str, object]:
    fields: dict[str, object] = {}
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemTotal":
                fields["memory_total_kib"] = int(value.split()[0])
            elif key == "MemAvailable":
                fields["memory_available_kib"] = int(value.split()[0])
    except OSError:
        pass
    fields["cgroup_memory_limit_kib"] = _cgroup_memory_limit_kib()
    return fields


def _cgroup_memory_limit_kib() -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), None when unlimited."""
    try:
        lines = (_PROC / "self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            candidates.append(_SYS_CGROUP / rel / "memory.max")
        elif "memory" in controllers.split(","):
            candidates.append(_SYS_CGROUP / "memory" / rel / "memory.limit_in_bytes")
    for candidate in candidates:
        try:
            raw = candidate.read_text().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit():
            return None
        value = int(raw) // 1024
        # cgroup v1 reports "unlimited" as a huge page-rounded number.
        return value if value < 2**50 else None
    return None
