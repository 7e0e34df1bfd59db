"""LUKS2 through the real `cryptsetup`: format, open, close, resize, status.

Keys reach cryptsetup on stdin (`--key-file=-`) only. Which cipher, PBKDF and flags to use
is decided by `cryptvol.luks.policy`; this module turns those decisions into arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptvol.errors import FailedPrecondition, InvalidArgument, NotFound
from cryptvol.system import CommandError, SecretFd, run
from cryptvol.system.devices import recognised_header
from cryptvol.system.secret import Secret

CRYPTSETUP = "cryptsetup"
MAPPER_DIR = Path("/dev/mapper")
# cryptsetup's documented exit codes (man cryptsetup, "RETURN CODES").
EXIT_WRONG_PARAMETERS = 1
EXIT_NO_PERMISSION = 2  # also: bad passphrase
EXIT_OUT_OF_MEMORY = 3
EXIT_WRONG_DEVICE = 4  # also: inactive mapping for `status`
EXIT_BUSY = 5


class WrongKey(FailedPrecondition):
    """cryptsetup found no keyslot that the key given opens."""


@dataclass(frozen=True)
class FormatOptions:
    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    hash: str = "sha256"
    pbkdf: str = "pbkdf2"
    pbkdf_memory_kib: int | None = None
    pbkdf_parallel: int | None = None
    iter_time_ms: int | None = None
    pbkdf_force_iterations: int | None = None
    sector_size: int | None = None
    label: str | None = None

    def argv(self) -> list[str]:
        args = ["--cipher", self.cipher, "--key-size", str(self.key_size),
                *self.keyslot_argv()]
        if self.sector_size is not None:
            args += ["--sector-size", str(self.sector_size)]
        if self.label is not None:
            args += ["--label", self.label]
        return args

    def keyslot_argv(self) -> list[str]:
        """How a keyslot stretches its key: for luksFormat, and for every keyslot added
        later (a new key, a reencryption's), so those cost what the plan says."""
        args = ["--hash", self.hash, "--pbkdf", self.pbkdf]
        if self.pbkdf_memory_kib is not None and self.pbkdf != "pbkdf2":
            args += ["--pbkdf-memory", str(self.pbkdf_memory_kib)]
        if self.pbkdf_parallel is not None and self.pbkdf != "pbkdf2":
            args += ["--pbkdf-parallel", str(self.pbkdf_parallel)]
        if self.pbkdf_force_iterations is not None:
            args += ["--pbkdf-force-iterations", str(self.pbkdf_force_iterations)]
        elif self.iter_time_ms is not None:
            args += ["--iter-time", str(self.iter_time_ms)]
        return args


@dataclass(frozen=True)
class OpenOptions:
    allow_discards: bool = False
    perf_no_read_workqueue: bool = False
    perf_no_write_workqueue: bool = False
    # True keeps the volume key in the dm table instead of the kernel keyring: resize then
    # needs no key, but root can read the key with `dmsetup table --showkeys`.
    disable_keyring: bool = False

    def argv(self) -> list[str]:
        args: list[str] = []
        if self.allow_discards:
            args.append("--allow-discards")
        if self.perf_no_read_workqueue:
            args.append("--perf-no_read_workqueue")
        if self.perf_no_write_workqueue:
            args.append("--perf-no_write_workqueue")
        if self.disable_keyring:
            args.append("--disable-keyring")
        return args


@dataclass(frozen=True)
class MappingStatus:
    name: str
    device: str
    size_sectors: int
    sector_size: int
    key_location: str  # "keyring" or "dm-crypt"

    @property
    def size_bytes(self) -> int:
        # `cryptsetup status` always counts `size:` in 512-byte sectors.
        return self.size_sectors * 512


def mapping_name(volume_id: str) -> str:
    """A stable dm name for a volume, so a retried stage finds the mapping it made."""
    digest = hashlib.sha256(volume_id.encode()).hexdigest()[:16]
    return f"cryptvol-{digest}"


def mapping_path(name: str) -> Path:
    return MAPPER_DIR / name


def is_luks(device: str) -> bool:
    if recognised_header(device) == "luks2":
        return True
    result = run([CRYPTSETUP, "isLuks", "--type", "luks2", device], check=False, timeout=30)
    return result.returncode == 0


def format_device(device: str, key: Secret, options: FormatOptions) -> None:
    """luksFormat `device`. The caller must have proven the device blank."""
    run(
        [CRYPTSETUP, "luksFormat", "--type", "luks2", "--batch-mode", *options.argv(),
         "--key-file=-", device],
        secret=key.reveal(),
        timeout=300,
    )


def _run_keyed(argv: list[str | SecretFd], refused: str, **kwargs: Any) -> None:
    """Run a cryptsetup command that needs a key; a key it refuses is WrongKey(`refused`)."""
    try:
        run(argv, timeout=300, **kwargs)
    except CommandError as exc:
        if exc.returncode == EXIT_NO_PERMISSION:
            raise WrongKey(refused) from None
        raise


def open_device(device: str, name: str, key: Secret, options: OpenOptions) -> None:
    _run_keyed([CRYPTSETUP, "open", "--type", "luks2", *options.argv(), "--key-file=-",
                device, name],
               f"the key does not unlock the LUKS2 header on {device}", secret=key.reveal())


def test_key(device: str, key: Secret) -> bool:
    """Whether `key` unlocks a keyslot of `device`, without creating a mapping."""
    result = run(
        [CRYPTSETUP, "open", "--test-passphrase", "--key-file=-", device],
        secret=key.reveal(), check=False, timeout=300,
    )
    return result.returncode == 0


def add_key(device: str, key: Secret, new_key: Secret, options: FormatOptions) -> None:
    """Add a keyslot for `new_key`, authorized by `key`; both travel through pipes."""
    _run_keyed([CRYPTSETUP, "luksAddKey", "--batch-mode", *options.keyslot_argv(),
                "--key-file", SecretFd("key"), device, SecretFd("new")],
               f"the key does not unlock the LUKS2 header on {device}",
               fd_secrets={"key": key.reveal(), "new": new_key.reveal()})


def remove_key(device: str, key: Secret) -> None:
    """Remove the keyslot `key` opens; another keyslot must stay."""
    _run_keyed([CRYPTSETUP, "luksRemoveKey", "--batch-mode", "--key-file=-", device],
               f"no keyslot on {device} opens with the key to remove", secret=key.reveal())


def close_device(name: str) -> None:
    """Close a mapping; closing one that is not there succeeds."""
    if not is_active(name):
        return
    run([CRYPTSETUP, "close", name], timeout=120)


def resize(name: str, key: Secret | None) -> None:
    """Grow the mapping to fill its backing device. LUKS2 asks for a key when the volume key
    lives in the kernel keyring; with the key in the dm table, `key` may be None."""
    if not is_active(name):
        raise NotFound(f"mapping {name} is not open")
    if key is None:
        run([CRYPTSETUP, "resize", "--batch-mode", name], timeout=120)
    else:
        _run_keyed([CRYPTSETUP, "resize", "--key-file=-", name],
                   f"the key does not unlock mapping {name} for resize", secret=key.reveal())


def status(name: str) -> MappingStatus | None:
    """The open mapping called `name`, or None when it is not active."""
    result = run([CRYPTSETUP, "status", name], check=False, timeout=30)
    if result.returncode != 0:
        return None
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    size = fields.get("size", "0 sectors").split()[0]
    sector = fields.get("sector size", "512").split()[0]
    return MappingStatus(
        name=name,
        device=fields.get("device", ""),
        size_sectors=int(size),
        sector_size=int(sector),
        key_location=fields.get("key location", "dm-crypt"),
    )


def is_active(name: str) -> bool:
    """Whether the mapping is open. libdevmapper makes the /dev/mapper node itself when
    no udev runs, so the node is there exactly while the mapping is."""
    return os.path.exists(mapping_path(name))


def dump_metadata(device: str) -> dict[str, Any]:
    """The LUKS2 header's JSON metadata (keyslots, tokens, segments, digests). Needs no key."""
    out = run([CRYPTSETUP, "luksDump", "--dump-json-metadata", device], timeout=30).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def keyslot_memory_kib(device: str) -> int:
    """The most PBKDF memory any keyslot of `device` needs to unlock (0 for pbkdf2 only):
    what NodeStage reserves from the node's unlock budget, read from the header itself."""
    keyslots = dump_metadata(device).get("keyslots", {})
    return max(
        (int(slot.get("kdf", {}).get("memory", 0)) for slot in keyslots.values()),
        default=0,
    )


def token_import(
    device: str, token: Mapping[str, Any], token_id: int | None = None, replace: bool = False
) -> int:
    """Store `token` (JSON with "type" and "keyslots") in the LUKS2 header; return its id.
    Needs no key. `replace` overwrites the token at `token_id`."""
    if "type" not in token or "keyslots" not in token:
        raise InvalidArgument('a LUKS2 token needs "type" and "keyslots"')
    argv = [CRYPTSETUP, "token", "import", "--verbose", "--json-file", "-"]
    if token_id is not None:
        argv += ["--token-id", str(token_id)]
        if replace:
            argv.append("--token-replace")
    result = run([*argv, device], stdin_text=json.dumps(token, separators=(",", ":")),
                 timeout=30)
    # --verbose makes cryptsetup say "Token N created."
    match = re.search(r"Token (\d+) created", result.stdout)
    if match:
        return int(match.group(1))
    if token_id is not None:
        return token_id
    raise CommandError(result.argv, 0, "token import did not say which token it created")


def token_export(device: str, token_id: int) -> dict[str, Any] | None:
    """The token at `token_id`, or None when that id is empty."""
    result = run([CRYPTSETUP, "token", "export", "--token-id", str(token_id), device],
                 check=False, timeout=30)
    if result.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def token_remove(device: str, token_id: int) -> None:
    run([CRYPTSETUP, "token", "remove", "--token-id", str(token_id), device], timeout=30)


def unlock_seconds(device: str, key: Secret) -> float:
    """How long one unlock of `device` takes (`open --test-passphrase`: the whole PBKDF, no
    mapping made, so it works on a header file without dm-crypt)."""
    started = time.monotonic()
    if not test_key(device, key):
        raise FailedPrecondition(f"the key does not unlock the LUKS2 header on {device}")
    return time.monotonic() - started
