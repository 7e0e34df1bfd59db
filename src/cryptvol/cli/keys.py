"""`cryptvol keys`: KEK rotation (status, prepare, rotate, reencrypt), backup, and replicas.

Every command finds the key store from `--state-dir`, `--etcd-endpoints` and `--root-key`
(or CRYPTVOL_STATE_DIR, CRYPTVOL_ETCD_ENDPOINTS, CRYPTVOL_ROOT_KEY); `keys_config` turns
them into a `KeysConfig`. Passphrases come from a prompt or a file, never from argv.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cryptvol.keys.config import DEFAULT_STATE_DIR, KeysConfig
from cryptvol.system.secret import Secret

F = TypeVar("F", bound=Callable[..., Any])


def keys_config(
    state_dir: Path | None,
    etcd_endpoints: str | None,
    root_key: Path | None,
    *,
    etcd_ca_file: Path | None = None,
    etcd_cert_file: Path | None = None,
    etcd_key_file: Path | None = None,
) -> KeysConfig:
    """The store and KEK provider settings from the command line (or its environment)."""
    return KeysConfig(
        state_dir=state_dir or DEFAULT_STATE_DIR,
        etcd_endpoints=etcd_endpoints or "",
        root_key=root_key,
        etcd_ca_file=etcd_ca_file,
        etcd_cert_file=etcd_cert_file,
        etcd_key_file=etcd_key_file,
    )


def store_options(fn: F) -> F:
    """Adds --state-dir, --etcd-endpoints (and its TLS files), --root-key; the command gets
    `config: KeysConfig`."""

    @click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False, readable=False),
        envvar="CRYPTVOL_STATE_DIR",
        help=f"State dir of the embedded store and local KEK file [default: {DEFAULT_STATE_DIR}].",
    )
    @click.option(
        "--etcd-endpoints",
        envvar="CRYPTVOL_ETCD_ENDPOINTS",
        help="Comma-separated etcd client URLs; the key store then lives in etcd.",
    )
    @click.option(
        "--etcd-ca-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="CRYPTVOL_ETCD_CA_FILE",
        help="CA bundle that signs the etcd members' certificates (https endpoints).",
    )
    @click.option(
        "--etcd-cert-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="CRYPTVOL_ETCD_CERT_FILE",
        help="Client certificate for etcd (with --etcd-key-file).",
    )
    @click.option(
        "--etcd-key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="CRYPTVOL_ETCD_KEY_FILE",
        help="Client certificate key for etcd.",
    )
    @click.option(
        "--root-key",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="CRYPTVOL_ROOT_KEY",
        help="Root key file (0600) sealing the KEK set in the store; needed with etcd.",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        state_dir: Path | None,
        etcd_endpoints: str | None,
        root_key: Path | None,
        etcd_ca_file: Path | None,
        etcd_cert_file: Path | None,
        etcd_key_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        config = keys_config(
            state_dir,
            etcd_endpoints,
            root_key,
            etcd_ca_file=etcd_ca_file,
            etcd_cert_file=etcd_cert_file,
            etcd_key_file=etcd_key_file,
        )
        return fn(*args, config=config, **kwargs)

    return wrapper  # type: ignore[return-value]


def _transition_options(fn: F) -> F:
    fn = click.option(
        "--force",
        is_flag=True,
        help="Skip the stage-order check and the wait for every replica to agree.",
    )(fn)
    return click.option(
        "--wait",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds to wait for every live replica to report the same key set.",
    )(fn)


@click.group("keys")
def keys_group() -> None:
    """KEK rotation, key backup and key-manager replicas."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


# -- status ---------------------------------------------------------------------------------


@keys_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@store_options
def status_command(config: KeysConfig, as_json: bool) -> None:
    """Stage, KEKs, each replica's key-set hash and reencrypt progress."""
    from cryptvol.keys.config import open_store
    from cryptvol.keys.status import read_status

    store = open_store(config, readonly=True)
    try:
        doc = read_status(store).to_json()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_status(doc))


def render_status(doc: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        f"stage:        {doc['stage']}   (next: {', '.join(doc['allowed_next'])})",
        f"current KEK:  {doc['current_kek']}",
        "KEKs:",
    ]
    for k in doc["keks"]:
        age = _age(now - k["created"])
        lines.append(
            f"  {k['id']:<34} {k['role']:<9} fp {k['fingerprint'][:16]}  age {age:<6}"
            f" {_kms_use(k, now)}".rstrip()
        )
    for r in doc["retired"]:
        lines.append(f"  {r['id']:<34} retired   fp {r['fingerprint'][:16]}  {'':<10} "
                     f"{_kms_use(r, now)}".rstrip())
    lines.append(f"DEKs:         {doc['deks']}")
    expected = doc["expected_report"]
    lines.append(f"key-set hash: {expected.rsplit('-', 1)[0]}-{expected.rsplit('-', 1)[1][:12]}")
    if doc["replicas"]:
        lines.append("replicas:")
        lines.append(f"  {'NAME':<20} {'ROLE':<12} {'AGREES':<7} {'REPORT':<36} LAST REPORT")
        for r in doc["replicas"]:
            stage, _, digest = r["report"].rpartition("-")
            report = f"{stage}-{digest[:12]}" if r["ready"] else f"not ready: {r['reason']}"
            agrees = "yes" if r["agrees"] else "NO"
            last = f"{now - r['last_report']:.1f}s ago"
            lines.append(f"  {r['name']:<20} {r['role']:<12} {agrees:<7} {report:<36} {last}")
    else:
        lines.append("replicas:     none live")
    re = doc["reencrypt"]
    if re:
        pct = 100.0 * re["done"] / re["total"] if re["total"] else 100.0
        eta = "" if re["eta_seconds"] is None else f", ETA {_age(re['eta_seconds'])}"
        if re["finished"]:  # counted in the store when it finished
            lines.append(f"reencrypt:    finished: {re['done']} DEKs under {re['target']}")
        else:
            lines.append(
                f"reencrypt:    in progress: {re['done']}/{re['total']} ({pct:.1f}%),"
                f" {re['rewrapped']} re-wrapped, {re['rate_per_second']}/s{eta}"
            )
    return "\n".join(lines)


def _kms_use(kek: dict[str, Any], now: float) -> str:
    if kek.get("kms_last_used") is None:
        return ""
    return f"KMS use {_age(now - kek['kms_last_used'])} ago ({kek['kms_last_used_by']})"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


# -- transitions ------------------------------------------------------------------------------


def _rotation(config: KeysConfig) -> tuple[Any, Any]:
    from cryptvol.keys.config import open_provider, open_store
    from cryptvol.keys.rotation import Rotation

    store = open_store(config, existing=True)
    return store, Rotation(store, open_provider(config))


def _say_forced(force: bool) -> None:
    if force:
        from cryptvol.keys.rotation import FORCE_SKIPS

        click.echo(f"--force: skipping {FORCE_SKIPS}", err=True)


@keys_group.command("prepare")
@_transition_options
@store_options
def prepare_command(config: KeysConfig, force: bool, wait: float) -> None:
    """Add a new KEK that every replica loads but nobody wraps with yet."""
    _say_forced(force)
    store, rotation = _rotation(config)
    try:
        kek = rotation.prepare(force=force, wait=wait)
    finally:
        store.close()
    click.echo(f"prepared KEK {kek.id}; once every replica reports it: cryptvol keys rotate")


@keys_group.command("rotate")
@_transition_options
@store_options
def rotate_command(config: KeysConfig, force: bool, wait: float) -> None:
    """Make the prepared KEK the one that wraps new DEKs."""
    _say_forced(force)
    store, rotation = _rotation(config)
    try:
        kek = rotation.rotate(force=force, wait=wait)
    finally:
        store.close()
    click.echo(f"KEK {kek.id} now wraps new keys; next: cryptvol keys reencrypt")


@keys_group.command("reencrypt")
@_transition_options
@click.option("--batch", type=int, default=0, help="DEKs per transaction [default: store's].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--retire-grace",
    default="24h",
    show_default=True,
    help="An old KEK a KMS plugin used this recently (e.g. 24h, 30m, 90s, 0) is not retired.",
)
@store_options
def reencrypt_command(
    config: KeysConfig, force: bool, wait: float, batch: int, quiet: bool, retire_grace: str
) -> None:
    """Re-wrap every DEK under the current KEK, then retire the old ones (resumable)."""
    from cryptvol.keys.rotation import deks_per_kek

    grace = parse_duration(retire_grace, "--retire-grace")
    _say_forced(force)
    store, rotation = _rotation(config)
    try:
        if quiet or not sys.stderr.isatty():
            state = rotation.reencrypt(force=force, wait=wait, batch=batch, retire_grace=grace)
        else:
            with click.progressbar(length=1, label="re-wrapping", file=sys.stderr) as bar:

                def progress(done: int, total: int) -> None:
                    bar.length = max(total, 1)
                    bar.update(done - bar.pos)

                state = rotation.reencrypt(
                    force=force, wait=wait, batch=batch, progress=progress, retire_grace=grace
                )
        # Counted in the store, not by the run: a resumed run cannot know what a crashed one
        # re-wrapped after its last saved cursor.
        counts = deks_per_kek(store)
    finally:
        store.close()
    others = {kek: n for kek, n in counts.items() if kek != state.target}
    if others:
        raise click.ClickException(
            f"reencrypt finished, but the store holds DEKs under other KEKs than {state.target}: "
            + ", ".join(f"{n} under {kek}" for kek, n in sorted(others.items()))
        )
    click.echo(
        f"reencrypt finished: all {counts[state.target]} DEKs in the store are wrapped under"
        f" {state.target}; old KEKs retired"
    )


def parse_duration(text: str, flag: str) -> float:
    """`24h`, `30m`, `90s`, `2d` or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration such as 24h, 30m or 90s",
                                 param_hint=flag) from None
    if not seconds >= 0:
        raise click.BadParameter(f"{text!r} is negative", param_hint=flag)
    return seconds


# -- backup -----------------------------------------------------------------------------------


def _passphrase(path: Path | None, *, confirm: bool) -> Secret:
    if path is not None:
        raw = path.read_bytes()
        return Secret(raw[:-1] if raw.endswith(b"\n") else raw)
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for the passphrase: use --passphrase-file")
    text = click.prompt("backup passphrase", hide_input=True, confirmation_prompt=confirm)
    return Secret(text.encode())


@keys_group.command("export")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Backup file."
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the passphrase from this file (else a prompt asks).",
)
@store_options
def export_command(config: KeysConfig, out: Path, passphrase_file: Path | None) -> None:
    """Write an encrypted, passphrase-protected backup of the KEK set."""
    from cryptvol.keys.backup import export_keys
    from cryptvol.keys.config import open_provider, open_store

    if out.exists():
        raise click.ClickException(f"{out} exists; choose a new file")
    passphrase = _passphrase(passphrase_file, confirm=True)
    store = open_store(config, readonly=True)
    try:
        blob = export_keys(store, open_provider(config), passphrase)
    finally:
        store.close()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    click.echo(f"wrote the KEK backup to {out} (mode 0600)")


@keys_group.command("import")
@click.argument("backup", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the passphrase from this file (else a prompt asks).",
)
@click.option(
    "--reseal",
    is_flag=True,
    help="Seal the key set by this --root-key although it is sealed by another one"
    " (a lost root key replaced by a new one; every replica must then mount the new one).",
)
@store_options
def import_command(
    config: KeysConfig, backup: Path, passphrase_file: Path | None, reseal: bool
) -> None:
    """Restore KEKs from a backup into the configured provider and the key-set record."""
    from cryptvol.keys.backup import import_keys
    from cryptvol.keys.config import open_provider, open_store

    passphrase = _passphrase(passphrase_file, confirm=False)
    store = open_store(config)
    try:
        ids = import_keys(
            store, open_provider(config), backup.read_bytes(), passphrase, reseal=reseal
        )
    finally:
        store.close()
    click.echo(f"restored KEK(s) {', '.join(ids)}")


# -- replicas ---------------------------------------------------------------------------------


@keys_group.command("serve-replica")
@click.option("--name", required=True, help="This replica's name in reports (stable).")
@click.option(
    "--health",
    default="127.0.0.1:9809",
    show_default=True,
    help="HOST:PORT of /healthz, /readyz, /status and /metrics ('' for none).",
)
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds per round.")
@click.option("--ttl", type=float, default=10.0, show_default=True, help="Report lease seconds.")
@store_options
def serve_replica(config: KeysConfig, name: str, health: str, interval: float, ttl: float) -> None:
    """Run a key-manager replica until SIGTERM."""
    from cryptvol.keys.replica import run_replica

    logging.getLogger().setLevel(logging.INFO)
    address = None
    if health:
        host, _, port = health.rpartition(":")
        address = (host or "127.0.0.1", int(port))
    raise SystemExit(run_replica(config, name, health=address, interval=interval, ttl=ttl))


@keys_group.command("init-root-key")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def init_root_key(path: Path) -> None:
    """Write a new root key file (0600) to share with every replica; never overwrites."""
    from cryptvol.keys.kek_rootkey import make_root_key

    make_root_key(path)
    click.echo(f"wrote a new root key to {path} (mode 0600)")


if __name__ == "__main__":
    keys_group()
