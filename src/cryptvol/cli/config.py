"""`cryptvol serve` settings: flags, then CRYPTVOL_* environment variables, then a TOML file.

None of these sources may carry a secret: the settings model has no field for one and
rejects unknown keys, so a key pasted into the config file is refused, not half-used.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryptvol.errors import InvalidArgument
from cryptvol.pools.registry import PoolSpec, parse_pool_spec
from cryptvol.state.records import DEFAULT_POOL

DEFAULT_ENDPOINT = "unix:///run/cryptvol/csi.sock"
DEFAULT_STATE_DIR = Path("/var/lib/cryptvol/state")
DEFAULT_POOL_DIR = Path("/var/lib/cryptvol/pool")


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = DEFAULT_ENDPOINT
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    role: Literal["all", "controller", "node"] = "all"
    state_dir: Path = DEFAULT_STATE_DIR
    # Pools as NAME=KIND:LOCATION; the first is the default. `pool_dir` is the shorthand
    # for one loop pool named "default"; with neither, that pool is in DEFAULT_POOL_DIR.
    pool: tuple[str, ...] = ()
    pool_dir: Path | None = None
    log_json: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    grace_seconds: float = Field(default=30.0, ge=0)
    # A cluster keeps state in etcd; the KEK set is then sealed by a root key file (a
    # path: the key itself never comes from configuration).
    etcd_endpoints: str = ""
    root_key: Path | None = None
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    # Node request paths (staging, target, volume paths) must lie inside it.
    kubelet_dir: Path = Path("/var/lib/kubelet")
    # Each pool promises volumes of at most its size times this ratio (1.0: no over-commit).
    overcommit_ratio: float = Field(default=1.0, gt=0)
    # Accept a state store that does not match this node's markers and pools, once.
    adopt: bool = False

    def pool_specs(self) -> tuple[PoolSpec, ...]:
        if self.pool and self.pool_dir is not None:
            raise InvalidArgument(
                "give pools with --pool, or one loop pool with --pool-dir, not both"
            )
        if self.pool:
            return tuple(parse_pool_spec(text) for text in self.pool)
        return (PoolSpec(DEFAULT_POOL, "loop", str(self.pool_dir or DEFAULT_POOL_DIR)),)


def load_config_file(path: Path) -> dict[str, Any]:
    """The `[serve]` table of a TOML config file, validated against ServeSettings' keys."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}") from None
    table = data.get("serve", {})
    if not isinstance(table, dict):
        raise InvalidArgument(f"{path}: [serve] must be a table")
    known = set(ServeSettings.model_fields)
    unknown = sorted(set(table) - known)
    if unknown:
        raise InvalidArgument(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    try:
        ServeSettings.model_validate(table)
    except ValidationError as exc:
        raise InvalidArgument(f"{path}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")\
            from None
    return table
