"""A LUKS2 token that makes a volume's header explain itself.

After luksFormat the engine writes a `cryptvol-policy` token into the header: the StorageClass
parameters, the cryptsetup options really used and why (e.g. "argon2id asked, host
cryptsetup lacks it, fell back to pbkdf2"), and what the formatting host could do. Anyone
with the disk can read it with `cryptsetup token export` or `luksDump`, without cryptvol.

The token holds no secret and binds no keyslot ("keyslots": []): cryptsetup never tries it
to unlock. The LUKS2 JSON area is small (12 KiB by default, shared with the keyslots), so
the token stays a few hundred bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import LuksParameters, LuksPlan
from cryptvol.luks.probe import HostProbe

TOKEN_TYPE = "cryptvol-policy"
TOKEN_VERSION = 1


class PolicyRecord(BaseModel):
    """What a `cryptvol-policy` token says."""

    model_config = ConfigDict(frozen=True)

    version: int = TOKEN_VERSION
    written_at: str
    parameters: dict[str, Any]
    format: dict[str, Any]
    open: dict[str, Any]
    reasons: tuple[str, ...]
    host: dict[str, Any] = {}

    def describe(self) -> str:
        return "; ".join(self.reasons)


def policy_record(
    params: LuksParameters, luks_plan: LuksPlan, host: HostProbe | None = None
) -> PolicyRecord:
    record = luks_plan.to_record()
    facts: dict[str, Any] = {}
    if host is not None:
        facts = {
            "cryptsetup": host.cryptsetup_version,
            "argon2": host.argon2,
            "fips": host.fips,
            "kernel": host.kernel_release,
        }
    return PolicyRecord(
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters=params.model_dump(exclude_defaults=True),
        format={k: v for k, v in record["format"].items() if v is not None},
        open=record["open"],
        reasons=tuple(record["reasons"]),
        host=facts,
    )


def write_policy_token(
    device: str, params: LuksParameters, luks_plan: LuksPlan, host: HostProbe | None = None
) -> int:
    """Write (or replace) the volume's policy token; return its token id. Needs no key."""
    record = policy_record(params, luks_plan, host)
    token = {"type": TOKEN_TYPE, "keyslots": [], **record.model_dump(mode="json")}
    existing = _find(device)
    if existing is not None:
        return cryptsetup.token_import(device, token, token_id=existing, replace=True)
    return cryptsetup.token_import(device, token)


def read_policy_token(device: str) -> PolicyRecord | None:
    """The policy the header records, or None for a header without one."""
    token_id = _find(device)
    if token_id is None:
        return None
    token = cryptsetup.token_export(device, token_id)
    if token is None:
        return None
    fields = {k: v for k, v in token.items() if k not in ("type", "keyslots")}
    return PolicyRecord.model_validate(fields)


def _find(device: str) -> int | None:
    tokens = cryptsetup.dump_metadata(device).get("tokens", {})
    for token_id, token in sorted(tokens.items(), key=lambda kv: int(kv[0])):
        if token.get("type") == TOKEN_TYPE:
            return int(token_id)
    return None
