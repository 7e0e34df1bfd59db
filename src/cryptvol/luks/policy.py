"""Which LUKS2 parameters a volume gets, from its StorageClass and from what the host can do.

`parse_luks_parameters` validates the StorageClass keys this layer owns; `plan` turns them,
the kind of key and the host probe into cryptsetup options plus the reason for each choice,
so they can be recorded with the volume, shown as an event and written into the header.
`plan` runs no command: CreateVolume calls it before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from cryptvol.errors import FailedPrecondition, InvalidArgument, quoted
from cryptvol.luks.budget import CRYPTSETUP_PROCESS_KIB, default_budget_kib
from cryptvol.luks.cryptsetup import FormatOptions, OpenOptions
from cryptvol.luks.probe import MEMORY_HARD, HostProbe

KeyKind = Literal["managed", "passphrase"]
Pbkdf = Literal["auto", "argon2id", "argon2i", "pbkdf2"]
# cryptsetup refuses fewer PBKDF2 iterations than this.
PBKDF2_MIN_ITERATIONS = 1000
# cryptsetup's own argon2 memory default (and ceiling of its benchmark), KiB.
ARGON2_DEFAULT_MEMORY_KIB = 1024 * 1024
ARGON2_MIN_MEMORY_KIB = 32
ARGON2_MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_PBKDF_PARALLEL = 16
MAX_ITER_TIME_MS = 60_000
# Key sizes (bits) each cipher mode takes: XTS splits the key in two halves.
_CIPHER_KEY_SIZES: dict[str, tuple[int, ...]] = {
    "aes-xts-plain64": (256, 512),
    "aes-xts-essiv:sha256": (256, 512),
    "serpent-xts-plain64": (256, 512),
    "twofish-xts-plain64": (256, 512),
    "aes-cbc-essiv:sha256": (128, 192, 256),
}
_HASHES = ("sha256", "sha384", "sha512")
_PBKDFS = ("auto", "argon2id", "argon2i", "pbkdf2")
_SECTOR_SIZES = (512, 4096)
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


class LuksParameters(BaseModel):
    """The StorageClass keys owned by the LUKS layer, as typed values (JSON-serializable)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    hash: str = "sha256"
    pbkdf: Pbkdf = "auto"
    pbkdf_memory_kib: int | None = None
    pbkdf_parallel: int | None = None
    iter_time_ms: int | None = None
    sector_size: int | None = None
    perf_no_read_workqueue: bool = False
    perf_no_write_workqueue: bool = False
    allow_discards: bool = False
    pbkdf_fallback: bool = True
    volume_key_in_keyring: bool = True


def _choice(*accepted: str) -> tuple[Callable[[str], Any], str]:
    def parse(value: str) -> str:
        if value not in accepted:
            raise ValueError
        return value
    return parse, ", ".join(accepted)


def _int_choice(*accepted: int) -> tuple[Callable[[str], Any], str]:
    def parse(value: str) -> int:
        if not value.isdigit() or int(value) not in accepted:
            raise ValueError
        return int(value)
    return parse, ", ".join(str(a) for a in accepted)


def _int_range(low: int, high: int) -> tuple[Callable[[str], Any], str]:
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError
        return int(value)
    return parse, f"an integer from {low} to {high}"


def _boolean() -> tuple[Callable[[str], Any], str]:
    def parse(value: str) -> bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError
    return parse, "true, false"


# StorageClass key -> (LuksParameters field, parser, accepted values as users read them).
_KEYS: dict[str, tuple[str, tuple[Callable[[str], Any], str]]] = {
    "cipher": ("cipher", _choice(*_CIPHER_KEY_SIZES)),
    "keySize": ("key_size", _int_choice(128, 192, 256, 512)),
    "hash": ("hash", _choice(*_HASHES)),
    "pbkdf": ("pbkdf", _choice(*_PBKDFS)),
    "pbkdfMemory": (
        "pbkdf_memory_kib", _int_range(ARGON2_MIN_MEMORY_KIB, ARGON2_MAX_MEMORY_KIB)
    ),
    "pbkdfParallel": ("pbkdf_parallel", _int_range(1, MAX_PBKDF_PARALLEL)),
    "iterTime": ("iter_time_ms", _int_range(1, MAX_ITER_TIME_MS)),
    "sectorSize": ("sector_size", _int_choice(*_SECTOR_SIZES)),
    "perfNoReadWorkqueue": ("perf_no_read_workqueue", _boolean()),
    "perfNoWriteWorkqueue": ("perf_no_write_workqueue", _boolean()),
    "allowDiscards": ("allow_discards", _boolean()),
    "pbkdfFallback": ("pbkdf_fallback", _boolean()),
    "volumeKeyInKeyring": ("volume_key_in_keyring", _boolean()),
}
_UNITS = {"pbkdfMemory": " (KiB)", "iterTime": " (milliseconds)"}

LUKS_PARAMETER_KEYS = frozenset(_KEYS)


def parse_luks_parameters(params: Mapping[str, str]) -> LuksParameters:
    """Validate the LUKS keys of a StorageClass's parameters (other keys are ignored here:
    the engine rejects keys that no layer owns)."""
    values: dict[str, Any] = {}
    for key, (name, (parse, accepted)) in _KEYS.items():
        if key not in params:
            continue
        raw = str(params[key]).strip()
        try:
            values[name] = parse(raw)
        except ValueError:
            raise InvalidArgument(
                f"StorageClass parameter {key!r}: {quoted(raw)} is not accepted; "
                f"accepted values: {accepted}{_UNITS.get(key, '')}"
            ) from None
    cipher = values.get("cipher", "aes-xts-plain64")
    sizes = _CIPHER_KEY_SIZES[cipher]
    if "key_size" not in values:
        values["key_size"] = max(sizes)
    elif values["key_size"] not in sizes:
        raise InvalidArgument(
            f"StorageClass parameter 'keySize': {values['key_size']} does not fit cipher "
            f"{cipher!r}; accepted values: {', '.join(str(s) for s in sizes)}"
        )
    return LuksParameters(**values)


@dataclass(frozen=True)
class LuksPlan:
    """The cryptsetup options for one volume and why each was chosen."""

    format: FormatOptions
    open: OpenOptions
    reasons: tuple[str, ...] = field(default_factory=tuple)
    # What one unlock of this volume costs in memory: the PBKDF's plus cryptsetup's own.
    unlock_memory_kib: int = CRYPTSETUP_PROCESS_KIB
    pbkdf_asked: str = "auto"
    fell_back: bool = False

    def describe(self) -> str:
        """One line for an event or `volume show`: the reasons, most important first."""
        return "; ".join(self.reasons)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready: what the engine stores with the volume and the header token holds."""
        return {
            "format": asdict(self.format),
            "open": asdict(self.open),
            "reasons": list(self.reasons),
            "unlock_memory_kib": self.unlock_memory_kib,
            "pbkdf_asked": self.pbkdf_asked,
            "fell_back": self.fell_back,
        }


def plan(
    params: LuksParameters,
    key_kind: KeyKind,
    host: HostProbe | None = None,
    budget_kib: int | None = None,
) -> LuksPlan:
    """Decide the LUKS options for a new volume, given the probe of the host that formats
    and opens it (None: not probed, assume it can do everything). `budget_kib` is the node's
    unlock memory budget (default: `budget.default_budget_kib(host)`). Runs no command."""
    reasons: list[str] = []
    _require_luks2(host)
    if key_kind == "managed":
        fmt, memory = _managed(params, host, reasons)
        fell_back = False
    else:
        fmt, memory, fell_back = _passphrase(params, host, budget_kib, reasons)
    return LuksPlan(
        format=fmt,
        open=open_options(params, host, reasons),
        reasons=tuple(reasons),
        unlock_memory_kib=memory + CRYPTSETUP_PROCESS_KIB,
        pbkdf_asked=params.pbkdf,
        fell_back=fell_back,
    )


def open_options(
    params: LuksParameters, host: HostProbe | None, reasons: list[str] | None = None
) -> OpenOptions:
    """dm-crypt options for opening the volume on `host`. NodeStage may call it again with
    the node's own probe: the flags a kernel accepts are the node's business.

    What each choice costs:
    - volumeKeyInKeyring true (default): dm-crypt holds only a reference to a `logon` key in
      the kernel keyring, so `dmsetup table --showkeys` cannot print the volume key; but
      `cryptsetup resize` (online expansion) must then be given the key again, so
      `keySource: secret` volumes need the node-expand secret. false: the key sits in the
      dm table (root can read it), and resize works without any key.
    - perfNoReadWorkqueue / perfNoWriteWorkqueue: crypt I/O inline in the submitting context
      instead of dm-crypt's workqueues: lower latency on fast devices (NVMe, RAM-backed),
      but heavy I/O then spends the submitter's CPU time; kernel 5.9+ (dropped elsewhere).
    - allowDiscards: TRIM reaches the device (thin pools and sparse files shrink), at the
      cost of revealing which blocks are unused.
    """
    notes = reasons if reasons is not None else []
    read_wq, write_wq = params.perf_no_read_workqueue, params.perf_no_write_workqueue
    if (read_wq or write_wq) and host is not None and host.dm_crypt:
        missing = [f for f, on in (("no_read_workqueue", read_wq),
                                   ("no_write_workqueue", write_wq))
                   if on and f not in host.perf_flags]
        if missing:
            notes.append(
                f"{', '.join(missing)} asked, host dm-crypt does not accept it "
                f"({host.perf_flags_detail}): left out"
            )
            read_wq = read_wq and "no_read_workqueue" not in missing
            write_wq = write_wq and "no_write_workqueue" not in missing
    disable_keyring = not params.volume_key_in_keyring
    if disable_keyring:
        notes.append("volume key kept in the dm table (volumeKeyInKeyring false)")
    elif host is not None and not host.keyring:
        disable_keyring = True
        notes.append(
            f"volume key kept in the dm table: host kernel keyring unusable "
            f"({host.keyring_detail})"
        )
    return OpenOptions(
        allow_discards=params.allow_discards,
        perf_no_read_workqueue=read_wq,
        perf_no_write_workqueue=write_wq,
        disable_keyring=disable_keyring,
    )


def _require_luks2(host: HostProbe | None) -> None:
    if host is None or host.luks2:
        return
    version = host.cryptsetup_version or "missing"
    raise FailedPrecondition(
        f"this host's cryptsetup ({version}) cannot format LUKS2 ({host.luks2_detail}); "
        "cryptvol needs cryptsetup 2.1 or newer with LUKS2: install it on the node"
    )


def _managed(
    params: LuksParameters, host: HostProbe | None, reasons: list[str]
) -> tuple[FormatOptions, int]:
    if host is not None and not host.pbkdf_available("pbkdf2"):
        raise FailedPrecondition(
            "this host's cryptsetup cannot run pbkdf2 "
            f"({host.pbkdf_detail('pbkdf2')}); cryptvol cannot format volumes here"
        )
    # A random 256-bit key gains nothing from stretching: minimum-cost PBKDF2 unlocks in
    # milliseconds with no memory, on every cryptsetup build.
    reason = "managed random key: pbkdf2 at minimum iterations"
    tuned = [k for k, v in (("pbkdf", params.pbkdf != "auto"),
                            ("pbkdfMemory", params.pbkdf_memory_kib),
                            ("pbkdfParallel", params.pbkdf_parallel),
                            ("iterTime", params.iter_time_ms)) if v]
    if tuned:
        reason += f" ({', '.join(tuned)} apply to passphrases only)"
    reasons.append(reason)
    fmt = FormatOptions(
        cipher=params.cipher,
        key_size=params.key_size,
        hash=params.hash,
        pbkdf="pbkdf2",
        pbkdf_force_iterations=PBKDF2_MIN_ITERATIONS,
        sector_size=params.sector_size,
    )
    return fmt, 0


def _passphrase(
    params: LuksParameters, host: HostProbe | None, budget_kib: int | None,
    reasons: list[str],
) -> tuple[FormatOptions, int, bool]:
    asked = params.pbkdf
    wanted = "argon2id" if asked == "auto" else asked
    chosen = wanted
    fell_back = False
    if wanted in MEMORY_HARD and host is not None and not host.pbkdf_available(wanted):
        why = _why_missing(host, wanted)
        if asked != "auto" and not params.pbkdf_fallback:
            raise FailedPrecondition(
                f"StorageClass asks pbkdf {asked} with pbkdfFallback false, but {why}; "
                "set pbkdfFallback to true (pbkdf2 is used then), ask pbkdf pbkdf2, "
                "or run the volume on nodes whose cryptsetup has argon2"
            )
        chosen = "pbkdf2"
        fell_back = True
        reasons.append(f"{asked} asked, {why}, fell back to pbkdf2")
    elif asked == "auto":
        reasons.append(f"passphrase: {chosen} (pbkdf auto)")
    else:
        reasons.append(f"passphrase: {chosen} as asked")

    if chosen == "pbkdf2":
        fmt = FormatOptions(
            cipher=params.cipher, key_size=params.key_size, hash=params.hash, pbkdf="pbkdf2",
            iter_time_ms=params.iter_time_ms, sector_size=params.sector_size,
        )
        return fmt, 0, fell_back

    budget = budget_kib if budget_kib is not None else (
        default_budget_kib(host) if host is not None else None
    )
    memory = params.pbkdf_memory_kib
    if memory is None:
        memory = ARGON2_DEFAULT_MEMORY_KIB
        # cryptsetup itself never asks for more than half the machine's memory.
        if host is not None and host.usable_memory_kib:
            memory = min(memory, host.usable_memory_kib // 2)
        if budget is not None and memory + CRYPTSETUP_PROCESS_KIB > budget:
            memory = max(ARGON2_MIN_MEMORY_KIB, budget - CRYPTSETUP_PROCESS_KIB)
            reasons.append(f"{chosen} memory capped at {memory} KiB by the node unlock budget")
    elif budget is not None and memory + CRYPTSETUP_PROCESS_KIB > budget:
        raise FailedPrecondition(
            f"pbkdfMemory {memory} KiB is more than the node's whole unlock memory budget "
            f"({budget} KiB): the volume could never be unlocked; lower pbkdfMemory or "
            "raise the budget"
        )
    fmt = FormatOptions(
        cipher=params.cipher, key_size=params.key_size, hash=params.hash, pbkdf=chosen,
        pbkdf_memory_kib=memory, pbkdf_parallel=params.pbkdf_parallel,
        iter_time_ms=params.iter_time_ms, sector_size=params.sector_size,
    )
    return fmt, memory, fell_back


def _why_missing(host: HostProbe, pbkdf: str) -> str:
    if host.fips:
        return f"host is in FIPS mode and its cryptsetup refuses {pbkdf}"
    detail = host.pbkdf_detail(pbkdf)
    return "host cryptsetup lacks it" + (f" ({detail.rstrip('.')})" if detail else "")
