"""`cryptvol serve` settings: flags, then CRYPTVOL_* environment variables, then a TOML file.

One source of truth: every option of `serve` is a field of `ServeSettings`, the key of the
same name in the config file's `[serve]` table, and the environment variable
`CRYPTVOL_<NAME>`; `SettingsCommand` makes every option read that variable (and the root
group names it in `--help`), so an option added to `serve` gets all three without more code.

None of these sources may carry a secret: the settings model has no field for one and
rejects unknown keys, so a key pasted into the config file is refused, not half-used.
"""

from __future__ import annotations

import difflib
import socket
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryptvol.cli.failures import ConfigError
from cryptvol.keys.config import DEFAULT_STATE_DIR
from cryptvol.mounts.kata_defaults import (
    DIRECT_VOLUMES_DIR,
    GO_SANDBOXES,
    RS_SANDBOXES,
    RUNTIME_HANDLERS,
)
from cryptvol.pools.registry import PoolSpec, parse_pool_spec
from cryptvol.state.records import DEFAULT_POOL

if TYPE_CHECKING:  # the driver's stack is imported where used: every command loads this
    from cryptvol.engine.driver import KataSettings

DEFAULT_ENDPOINT = "unix:///run/cryptvol/csi.sock"
DEFAULT_POOL_DIR = Path("/var/lib/cryptvol/pool")
ENV_PREFIX = "CRYPTVOL"
# The config file's tables: each names the command whose settings it holds.
TABLES = ("serve",)


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
    # HOST:PORT of the Prometheus /metrics endpoint; empty: none.
    metrics_address: str = ""
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
    # Kata direct-assigned volumes: handler patterns that mean Kata (comma-separated; empty
    # turns the runtime-class trigger off), the API to read, and Kata's folders.
    kata_runtime_handlers: str = ",".join(RUNTIME_HANDLERS)
    kubeconfig: Path | None = None
    kata_direct_volumes_dir: Path = DIRECT_VOLUMES_DIR
    kata_sandbox_dirs: str = f"{GO_SANDBOXES},{RS_SANDBOXES}"

    def kata_settings(self) -> KataSettings:
        from cryptvol.engine.driver import KataSettings

        dirs = [d.strip() for d in self.kata_sandbox_dirs.split(",")]
        if len(dirs) != 2 or not all(d.startswith("/") for d in dirs):
            raise ConfigError(
                "serve: --kata-sandbox-dirs takes two absolute folders, the Go runtime's and "
                f"runtime-rs's, comma-separated (default {GO_SANDBOXES},{RS_SANDBOXES})"
            )
        return KataSettings(
            direct_volumes_dir=self.kata_direct_volumes_dir,
            go_sandboxes_dir=Path(dirs[0]),
            rs_sandboxes_dir=Path(dirs[1]),
            runtime_handlers=tuple(
                h.strip() for h in self.kata_runtime_handlers.split(",") if h.strip()),
            kubeconfig=self.kubeconfig,
        )

    def pool_specs(self) -> tuple[PoolSpec, ...]:
        if self.pool and self.pool_dir is not None:
            raise ConfigError(
                "serve: give pools with --pool, or one loop pool with --pool-dir, not both"
            )
        if self.pool:
            return tuple(parse_pool_spec(text) for text in self.pool)
        return (PoolSpec(DEFAULT_POOL, "loop", str(self.pool_dir or DEFAULT_POOL_DIR)),)


class SettingsCommand(click.Command):
    """A command whose every option is also the environment variable CRYPTVOL_<NAME>
    (unless it names its own); the root group shows it in `--help` as `[env var: ...]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = dict(kwargs.get("context_settings") or {})
        settings.setdefault("auto_envvar_prefix", ENV_PREFIX)
        kwargs["context_settings"] = settings
        super().__init__(*args, **kwargs)


def option_envvar(option: click.Option) -> str:
    """The environment variable an option of a `SettingsCommand` reads."""
    if isinstance(option.envvar, str):
        return option.envvar
    return f"{ENV_PREFIX}_{(option.name or '').upper()}"


def load_config_file(path: Path) -> dict[str, Any]:
    """The `[serve]` table of a TOML config file, validated against ServeSettings' keys.

    Keys may be written as the field (`state_dir`) or as the flag (`state-dir`); the table
    comes back keyed by field. Anything else (another table, a key outside any table, an
    unknown key, a bad value) is refused in one line that names it.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for name, value in data.items():
        if name in TABLES:
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown table [{name}]{_did_you_mean(name, TABLES, '[{}]')}; "
                f"cryptvol reads only {', '.join(f'[{t}]' for t in TABLES)}"
            )
        raise ConfigError(f"{path}: {name!r} is outside any table; settings go in [serve]")
    table = data.get("serve", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: serve must be a table: write [serve] on a line of its own")
    fields = list(ServeSettings.model_fields)
    settings: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in table.items():
        field = key.replace("-", "_")
        if field not in fields:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [serve]{_did_you_mean(field, fields)}; "
                f"known keys: {', '.join(fields)}"
            )
        if field in settings:
            raise ConfigError(f"{path}: [serve] sets {field} twice ({spelt[field]}, {key})")
        settings[field], spelt[field] = value, key
    try:
        ServeSettings.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [serve] {_first_problem(exc)}") from None
    return settings


def settings_from(options: dict[str, Any]) -> ServeSettings:
    """The settings from the values click gathered (flag, environment, file)."""
    try:
        return ServeSettings.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"serve: {_first_problem(exc, flags=True)}") from None


def _first_problem(exc: ValidationError, *, flags: bool = False) -> str:
    problem = exc.errors()[0]
    name = str(problem["loc"][0]) if problem["loc"] else "?"
    shown = f"--{name.replace('_', '-')}" if flags else name
    return f"{shown}: {problem['msg']}"


def _did_you_mean(word: str, choices: Any, form: str = "{}") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {form.format(close[0])}?)" if close else ""
