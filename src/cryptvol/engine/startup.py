"""What a driver checks before it serves anything: its state dir is private, and its state
store is the one this node's pools and KEK file were used with.

The store has an identity (`state.identity`): a random id in the store, in a 0600 marker in
the state dir beside the KEK file, and in each pool. The driver refuses to start when

- the store holds nothing (missing, emptied, a WAL lost) but the node shows an earlier
  life: a marker, a KEK file holding KEKs, volumes in a pool;
- a marker names another store than the one opened (swapped, or restored from elsewhere);
- a pool holds volumes the store has no record of (records lost).

Each would otherwise start "fine" and silently orphan every key it lost. The refusal is one
line that says what to do: restore the store from a backup, or start once with `--adopt`,
which accepts the store as it is, marks everything with its identity and lists the pool
volumes that are now unreadable.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptvol.engine.audit import unrecorded_volumes
from cryptvol.errors import CryptvolError, FailedPrecondition, PermissionDenied
from cryptvol.keys.keyset import DEK_PREFIX, KEYSET_KEY
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state import identity
from cryptvol.state.layout import SNAPSHOTS, VOLUMES
from cryptvol.state.repository import VolumeRepository
from cryptvol.store.base import Store

log = logging.getLogger(__name__)
RECOVERY = ("Restore the state store from a backup (README: 'When the driver refuses to "
            "start'), or start once with --adopt to accept it as it is (pool volumes it has "
            "no key for stay unreadable)")
_SHOWN_IDS = 3


class StartRefused(FailedPrecondition):
    """The driver must not serve over this state: the message says why and what to do."""


def prepare_state_dir(path: Path) -> None:
    """Make the state dir 0700, or tighten one that exists with a looser mode: it holds the
    wrapped DEKs and (embedded) the KEK file. Refuse one this process cannot make private."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    found = path.stat()
    if not stat.S_ISDIR(found.st_mode):
        raise StartRefused(f"the state dir {path} is not a directory")
    if found.st_uid != os.geteuid():
        raise PermissionDenied(
            f"permission denied on {path}: the state dir belongs to uid {found.st_uid}, not "
            f"to this driver's uid {os.geteuid()}; give it to the driver's user (chown) or "
            "choose another"
        )
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, mode & 0o700)
        except OSError as exc:
            raise StartRefused(
                f"the state dir {path} has mode {mode:04o}, readable by others, and cannot be "
                f"made 0700 ({exc.strerror}); fix its mode"
            ) from None
        log.warning("tightened the state dir's mode", extra={"path": str(path),
                                                             "was": f"{mode:04o}"})


@dataclass(frozen=True)
class NodeEvidence:
    """What this node keeps outside the store: the state dir's marker and KEK count."""

    state_dir: Path
    kek_file: Path | None  # the local KEK file, when KEKs are kept in one
    kek_count: int | str  # KEKs it holds, or why it cannot be read


def check_store_identity(store: Store, store_name: str, evidence: NodeEvidence,
                         pools: PoolRegistry, volumes: VolumeRepository, *,
                         adopt: bool = False) -> identity.StoreIdentity:
    """Check the store against the node's markers and pools (see the module docstring);
    mark what is not marked yet. Raises StartRefused, or with `adopt` accepts the store,
    logs what is orphaned and marks everything with its identity."""
    found = identity.read_identity(store)
    marker = identity.read_marker(evidence.state_dir)
    pool_markers = {p.name: p.provisioner.store_marker() for p in pools.all()}
    problems: list[str] = []
    if found is None and not _holds_state(store):
        problems += _earlier_life(evidence, marker, pool_markers, pools)
        if problems:
            problems.insert(0, f"the state store {store_name} is empty, but this node was "
                               "used before")
    elif found is not None:
        named = [(f"the marker {identity.marker_path(evidence.state_dir)}", marker)]
        named += [(f"pool {name}'s marker", m) for name, m in pool_markers.items()]
        for where, other in named:
            if other is not None and other != found.id:
                problems.append(
                    f"the state store {store_name} is {found.id}, but {where} names {other} "
                    "(a swapped store, or one restored from elsewhere)"
                )
    if not problems:
        lost = _lost_volumes(store, pools, volumes)
        if lost:
            problems.append(f"the state store {store_name} has no record of "
                            + _volumes_text(lost))
    if problems and not adopt:
        raise StartRefused(f"refusing to start: {'; '.join(problems)}. {RECOVERY}")
    store_identity = found or identity.create_identity(store)
    if problems:
        lost = _lost_volumes(store, pools, volumes)
        identity.record_adopted_orphans(store, lost)
        log.warning("adopted the state store as it is (--adopt)", extra={
            "store": store_identity.id, "was": "; ".join(problems),
            "unreadable": _volumes_text(lost, every=True) if lost else "none"})
    identity.write_marker(evidence.state_dir, store_identity.id)
    for pool in pools.all():
        pool.provisioner.mark_store(store_identity.id)
    return store_identity


def _lost_volumes(store: Store, pools: PoolRegistry, volumes: VolumeRepository
                  ) -> dict[str, list[str]]:
    """Pool volumes without a record, but for those an earlier --adopt accepted."""
    known = {r.id for r in volumes.all()} | identity.adopted_orphans(store)
    return unrecorded_volumes(pools, known)


def _holds_state(store: Store) -> bool:
    """Whether the store holds anything of volumes or keys (a store from before identities
    gets one without a question: it is not empty)."""
    return (store.get(KEYSET_KEY) is not None
            or any(store.count(prefix) for prefix in (VOLUMES.records, SNAPSHOTS.records,
                                                       DEK_PREFIX)))


def _earlier_life(evidence: NodeEvidence, marker: str | None,
                  pool_markers: dict[str, str | None], pools: PoolRegistry) -> list[str]:
    signs = []
    if marker is not None:
        signs.append(f"the marker {identity.marker_path(evidence.state_dir)} names store "
                     f"{marker}")
    if evidence.kek_file is not None and evidence.kek_count:
        what = (f"holds {evidence.kek_count} KEK(s)" if isinstance(evidence.kek_count, int)
                else f"cannot be read ({evidence.kek_count})")
        signs.append(f"the KEK file {evidence.kek_file} {what}")
    signs += [f"pool {name}'s marker names store {m}" for name, m in pool_markers.items()
              if m is not None]
    volumes = unrecorded_volumes(pools, ())
    if volumes:
        signs.append(_volumes_text(volumes))
    return signs


def _volumes_text(by_pool: dict[str, list[str]], every: bool = False) -> str:
    parts = []
    for pool, ids in by_pool.items():
        shown = ids if every else ids[:_SHOWN_IDS]
        more = f" and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
        parts.append(f"{len(ids)} volume(s) in pool {pool} ({', '.join(shown)}{more})")
    return ", ".join(parts)


def kek_evidence(state_dir: Path, local_keks: bool) -> NodeEvidence:
    """The node's evidence; with KEKs in a local file, how many it holds."""
    if not local_keks:
        return NodeEvidence(state_dir, None, 0)
    from cryptvol.keys.kek_local import LocalKekProvider

    provider = LocalKekProvider(state_dir)
    try:
        count: int | str = len(provider.load_all())
    except CryptvolError as exc:
        count = str(exc)
    return NodeEvidence(state_dir, provider.path, count)
