"""StorageClass parameters: every key is owned by one layer, and an unknown key is an error.

A typo such as `keysize` would otherwise silently give a volume the defaults; rejecting it
at CreateVolume tells the user while nothing has been written.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from cryptvol.errors import InvalidArgument, quoted
from cryptvol.luks.policy import LUKS_PARAMETER_KEYS, LuksParameters, parse_luks_parameters
from cryptvol.mounts.filesystem import SUPPORTED as SUPPORTED_FS
from cryptvol.mounts.filesystem import check_fs_type
from cryptvol.state.records import KeySource

FSTYPE_KEY = "csi.storage.k8s.io/fstype"
# Kubernetes' external-provisioner adds these (with --extra-create-metadata) and reserves
# the prefix; they describe the claim, not the volume, so they are accepted and not stored.
RESERVED_PREFIX = "csi.storage.k8s.io/"
KEY_SOURCE_KEY = "keySource"
SECRET_KEY_KEY = "secretKey"
POOL_KEY = "pool"
KATA_DIRECT_KEY = "kataDirectVolume"
CLONE_REENCRYPT_KEY = "cloneReencrypt"
ENGINE_KEYS = frozenset({FSTYPE_KEY, KEY_SOURCE_KEY, SECRET_KEY_KEY, POOL_KEY, KATA_DIRECT_KEY,
                         CLONE_REENCRYPT_KEY})
_BOOLEANS = {"true": True, "false": False}
_KEY_SOURCES: tuple[KeySource, ...] = ("managed", "secret")


class VolumeParameters(BaseModel):
    model_config = ConfigDict(frozen=True)

    fs_type: str = "ext4"
    key_source: KeySource = "managed"
    secret_key: str = "passphrase"
    # The configured pool to provision from; empty: the driver's default (first) pool.
    pool: str = ""
    # The class makes every volume a Kata direct-assigned volume (see engine.direct).
    kata_direct: bool = False
    # A copy (clone or restore) gets its own volume key by LUKS2 reencryption at its first
    # stage, so its source's key and header no longer decrypt it.
    clone_reencrypt: bool = False
    luks: LuksParameters
    # The parameters as given, minus claim metadata: compared on a repeated CreateVolume.
    raw: dict[str, str]


def parse_parameters(params: Mapping[str, str]) -> VolumeParameters:
    kept = {k: v for k, v in params.items() if not _is_claim_metadata(k)}
    unknown = sorted(k for k in kept if k not in ENGINE_KEYS and k not in LUKS_PARAMETER_KEYS)
    if unknown:
        known = sorted(ENGINE_KEYS | LUKS_PARAMETER_KEYS)
        raise InvalidArgument(
            f"unknown parameter(s) {', '.join(quoted(k) for k in unknown[:5])}"
            f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}; "
            f"accepted keys: {', '.join(known)}"
        )
    fs_type = kept.get(FSTYPE_KEY, "ext4")
    try:
        check_fs_type(fs_type)
    except InvalidArgument:
        raise InvalidArgument(
            f"parameter {FSTYPE_KEY!r}: {quoted(fs_type)} is not supported; "
            f"accepted values: {', '.join(SUPPORTED_FS)}"
        ) from None
    key_source = kept.get(KEY_SOURCE_KEY, "managed")
    if key_source not in _KEY_SOURCES:
        raise InvalidArgument(
            f"parameter {KEY_SOURCE_KEY!r}: {quoted(key_source)} is not supported; "
            f"accepted values: {', '.join(_KEY_SOURCES)}"
        )
    secret_key = kept.get(SECRET_KEY_KEY, "passphrase")
    if not secret_key:
        raise InvalidArgument(f"parameter {SECRET_KEY_KEY!r} must not be empty")
    kata_direct = kept.get(KATA_DIRECT_KEY, "false")
    if kata_direct not in ("true", "false"):
        raise InvalidArgument(
            f"parameter {KATA_DIRECT_KEY!r}: {kata_direct!r} is not supported; "
            "accepted values: true, false"
        )
    clone_reencrypt = _BOOLEANS.get(kept.get(CLONE_REENCRYPT_KEY, "false").lower())
    if clone_reencrypt is None:
        raise InvalidArgument(
            f"parameter {CLONE_REENCRYPT_KEY!r}: {kept[CLONE_REENCRYPT_KEY]!r} is not "
            '"true" or "false"'
        )
    return VolumeParameters(
        fs_type=fs_type,
        kata_direct=kata_direct == "true",
        clone_reencrypt=clone_reencrypt,
        key_source="secret" if key_source == "secret" else "managed",
        secret_key=secret_key,
        pool=kept.get(POOL_KEY, ""),
        luks=parse_luks_parameters(kept),
        raw=dict(kept),
    )


def _is_claim_metadata(key: str) -> bool:
    return key.startswith(RESERVED_PREFIX) and key != FSTYPE_KEY


def parse_snapshot_parameters(params: Mapping[str, str]) -> None:
    """A VolumeSnapshotClass's parameters: cryptvol takes none of its own (a snapshot lives
    in its volume's pool and keeps its volume's encryption); the csi-snapshotter's
    `csi.storage.k8s.io/` metadata is accepted and ignored."""
    unknown = sorted(k for k in params if not k.startswith(RESERVED_PREFIX))
    if unknown:
        raise InvalidArgument(
            f"unknown snapshot parameter(s) {', '.join(repr(k) for k in unknown)}: a snapshot "
            "takes no parameters; it lives in its volume's pool and keeps its encryption"
        )
