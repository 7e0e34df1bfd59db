"""The key manager: per-volume data keys (DEKs), wrapped under the current KEK, in the store.

A replica first loads the key-set record and the material of every KEK it names; until that
has worked it is not ready and serves nothing, so it can never wrap under a half-loaded set.
Every new DEK is written with two compares: its own key must be absent (a DEK is never
replaced) and the key-set record must be the one this replica loaded, so a replica that has
not yet seen a rotation cannot wrap a new key under a KEK that reencrypt is about to retire.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptvol.errors import (
    Aborted,
    CryptvolError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cryptvol.keys import envelope
from cryptvol.keys.kek import Kek, KekProvider, new_kek_id
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.keyset import DEK_PREFIX, KEYSET_KEY, KekRecord, KeySetRecord, dek_key
from cryptvol.keys.metrics import KeyMetrics
from cryptvol.store.base import Compare, Delete, Put, Store
from cryptvol.store.sqlite import DB_FILE, SqliteStore
from cryptvol.system.secret import Secret

log = logging.getLogger(__name__)

DEK_BYTES = 32
NEXT_SUFFIX = "+next"
_CAS_ATTEMPTS = 20
_RETRY_EVERY = 1.0  # seconds between on-demand loads of a key set that would not load


@dataclass(frozen=True)
class LoadedKeySet:
    """A key-set record, the store revision it was read at, and the material it names."""

    record: KeySetRecord
    revision: int
    keks: dict[str, Kek]
    _current: Kek = field(init=False, repr=False, compare=False)

    @property
    def current_id(self) -> str:
        return self._current.id

    @property
    def current(self) -> Kek:
        return self._current

    def __post_init__(self) -> None:
        object.__setattr__(self, "_current", self.keks[self.record.current.id])

    def find(self, kek_id: str) -> Kek:
        kek = self.keks.get(kek_id)
        if kek is not None:
            return kek
        if self.record.is_retired(kek_id):
            raise FailedPrecondition(f"KEK {kek_id} is retired; no wrapped key may use it")
        raise FailedPrecondition(f"KEK {kek_id} is not in the key set this replica loaded")


def load_key_set(store: Store, provider: KekProvider, *, create: bool = True,
                 over_held: bool = False) -> LoadedKeySet:
    """Read the key-set record and open every KEK it names; make the first KEK on a new store.

    Raises FailedPrecondition when material is missing, corrupt or does not match its
    recorded fingerprint, and Unavailable when the store cannot be reached. A store with no
    key set is new only while the provider holds no KEKs: else it was emptied or swapped,
    and a first KEK made there would leave every wrapped key behind. Only `over_held` (the
    driver's --adopt) makes one anyway.
    """
    for attempt in range(_CAS_ATTEMPTS):
        entry = store.get(KEYSET_KEY)
        if entry is not None:
            record = KeySetRecord.from_bytes(entry.value)
            keks: dict[str, Kek] = {}
            for rec in record.keks:
                kek = provider.open(rec.id, rec.ref, rec.created)
                if kek.fingerprint != rec.fingerprint:
                    raise FailedPrecondition(
                        f"the material {provider.name} holds for KEK {rec.id} does not match the"
                        f" fingerprint the state store records for it ({rec.fingerprint}); it is"
                        " another key. Restore the right one from a backup (cryptvol keys import)"
                    )
                keks[rec.id] = kek
            return LoadedKeySet(record, entry.revision, keks)
        wrapped = store.count(DEK_PREFIX)
        if wrapped:
            raise FailedPrecondition(
                f"the state store holds {wrapped} wrapped data keys but no key-set record"
                f" ({KEYSET_KEY}); restore it from a backup (cryptvol keys import)."
                " cryptvol never makes a new KEK in its place"
            )
        if not create:
            raise FailedPrecondition("the state store holds no key set yet")
        held = provider.held()
        if held and not over_held:
            if attempt < 2:
                # Another replica may be between keeping its first KEK and recording it.
                time.sleep(0.1)
                continue
            raise FailedPrecondition(
                f"the state store holds no key set, but {provider.name} "
                f"holds {held} KEK(s): the store was emptied, deleted or swapped since they "
                "were made. Restore it from a backup (README: 'When the driver refuses to "
                "start'); cryptvol never makes a new KEK over them"
            )
        sealer = provider.sealer()
        kek, ref = provider.create(new_kek_id())
        record = KeySetRecord(
            stage="start",
            keks=(KekRecord(kek.id, kek.created, kek.fingerprint, ref, "current"),),
            changed=time.time(),
            history=(("start", time.time()),),
            sealed_by=sealer,
        )
        if store.txn([Compare(KEYSET_KEY, 0)], [Put(KEYSET_KEY, record.to_bytes())]):
            log.info("made the first KEK %s (%s)", kek.id, provider.name)
            continue
        provider.discard(kek.id)  # another replica made the first key set first: use theirs
    raise Aborted("the key-set record kept changing while loading it; retry")


def check_sealer(record: KeySetRecord, provider: KekProvider) -> str:
    """The fingerprint of the key `provider` seals new KEKs with, once it is the one `record`
    already uses (as recorded, or as its KEKs' references name it); raise FailedPrecondition
    naming both fingerprints when it is not. A key set is never resealed under another root
    key by accident: that takes `cryptvol keys import --reseal`."""
    mine = provider.sealer()
    theirs = record.sealed_by or next(
        (fp for k in record.keks if (fp := provider.sealer_of(k.ref))), ""
    )
    if mine != theirs:
        sealed = f"the root key with fingerprint {theirs}" if theirs else "no root key"
        offered = f"has fingerprint {mine}" if mine else "is no root key"
        raise FailedPrecondition(
            f"the key set is sealed by {sealed}, but {provider.name} {offered}: give the root"
            " key the key set uses. Nothing was changed (to move the key set to another root"
            " key: cryptvol keys import --reseal)"
        )
    return mine


class KeyManager:
    """Creates, reads and deletes the DEK of each volume. Thread-safe."""

    def __init__(
        self,
        store: Store,
        provider: KekProvider,
        *,
        lazy: bool = False,
        metrics: KeyMetrics | None = None,
        adopt: bool = False,
    ) -> None:
        """Load the key set now. With `lazy`, a failure leaves the manager not ready (with the
        reason) instead of raising; `reload()` tries again. Without it, only an unreachable
        store is tolerated: missing or corrupt KEK material raises FailedPrecondition.
        `metrics` records on the process's registry (a private one when not given). `adopt`
        makes a first KEK even over a provider that holds KEKs (see `load_key_set`)."""
        self.store = store
        self.provider = provider
        self._adopt = adopt
        self.metrics = metrics if metrics is not None else KeyMetrics()
        self._lock = threading.Lock()
        self._loaded: LoadedKeySet | None = None
        self._reason = "the key set has not been loaded yet"
        self._last_try = time.monotonic()
        try:
            self.reload()
        except Unavailable:
            pass
        except CryptvolError:
            if not lazy:
                raise

    # -- readiness -------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._loaded is not None

    def not_ready_reason(self) -> str:
        return "" if self._loaded is not None else self._reason

    def reload(self) -> LoadedKeySet:
        """Load the key set from the store again; on failure keep the last good one, if any."""
        with self._lock:
            try:
                loaded = load_key_set(self.store, self.provider, over_held=self._adopt)
            except CryptvolError as exc:
                if self._loaded is None:
                    self._reason = f"the key set is not loaded: {exc}"
                raise
            self._loaded = loaded
            self._reason = ""
            self.metrics.observe_key_set(loaded.record)
            return loaded

    @property
    def loaded(self) -> LoadedKeySet:
        """The loaded key set; when there is none yet, one more try to load it (at most once
        a second), so a manager started while the store was down heals on its next use."""
        loaded = self._loaded
        if loaded is None and time.monotonic() - self._last_try >= _RETRY_EVERY:
            self._last_try = time.monotonic()
            try:
                loaded = self.reload()
            except CryptvolError:
                loaded = None
        if loaded is None:
            raise Unavailable(f"the key manager is not ready: {self._reason}")
        return loaded

    def loaded_or_none(self) -> LoadedKeySet | None:
        return self._loaded

    def refresh_if_stale(self, seen: LoadedKeySet) -> LoadedKeySet:
        """`seen`, or the key set loaded again if the store's record has changed since."""
        entry = self.store.get(KEYSET_KEY)
        if entry is not None and entry.revision != seen.revision:
            return self.reload()
        return seen

    # -- data keys -------------------------------------------------------------------------

    def create_dek(self, volume_id: str) -> Secret:
        _check_volume_id(volume_id)
        return self._store_new(volume_id, lambda: Secret(os.urandom(DEK_BYTES)))

    def copy_dek(self, source_id: str, target_id: str) -> None:
        """Give `target_id` its own copy of the DEK of `source_id`, wrapped for `target_id`
        (its id is the associated data, like any DEK's, and KEK rotation re-wraps it like
        any other). A snapshot keeps the key its bytes were written with this way, whatever
        later happens to its source's key. A repeat keeps the copy already made."""
        _check_volume_id(source_id)
        _check_volume_id(target_id)
        self._store_new(target_id, lambda: self.get_dek(source_id))

    def new_dek_write(self, volume_id: str) -> tuple[list[Compare], list[Put | Delete]]:
        """The compares and ops that store a new DEK for `volume_id` inside a caller's
        transaction (the volume's record and its key in one commit). The compares fail it
        when the volume has a DEK or the key set moved since it was loaded: then
        `create_dek` does it alone."""
        _check_volume_id(volume_id)
        loaded = self.loaded
        key = dek_key(volume_id)
        try:
            blob = envelope.wrap(loaded.current, Secret(os.urandom(DEK_BYTES)), volume_id)
        except Exception:
            self.metrics.wrap_errors.inc()
            raise
        return [Compare(key, 0), Compare(KEYSET_KEY, loaded.revision)], [Put(key, blob)]

    def get_dek(self, volume_id: str) -> Secret:
        _check_volume_id(volume_id)
        loaded = self.loaded
        entry = self.store.get(dek_key(volume_id))
        if entry is None:
            raise NotFound(f"volume {volume_id} has no data key in the key store")
        return self._unwrap(entry.value, volume_id, loaded)

    def has_dek(self, volume_id: str) -> bool:
        """Whether the store holds a wrapped DEK for the volume; nothing is unwrapped."""
        _check_volume_id(volume_id)
        return self.store.get(dek_key(volume_id)) is not None

    def delete_dek(self, volume_id: str) -> None:
        """Shred the DEK: delete it, then have the store forget its history, so the wrapped
        key cannot be read back from an earlier revision or the store's files. Run again
        after a failure, it forgets what the failed run left."""
        self.store.txn([], self.shred_ops(volume_id))
        self.forget_shredded()

    def shred_ops(self, volume_id: str) -> list[Put | Delete]:
        """The ops that delete the DEK of `volume_id` inside a caller's transaction; once
        it has committed, `forget_shredded` finishes the shred."""
        _check_volume_id(volume_id)
        return [Delete(dek_key(volume_id)), Delete(dek_key(_next_id(volume_id)))]

    def forget_shredded(self) -> None:
        """Make every DEK deleted so far unreadable from the store's history and files."""
        self.store.forget_history()

    # -- replacing one volume's DEK: a new key is made, the node adds a keyslot for it and
    # removes the old one, then the new key takes the old one's place. Until then both are
    # kept, so a crash between any two steps leaves a key that opens the volume.

    def next_dek(self, volume_id: str) -> Secret:
        """The DEK that will replace the volume's current one, made on first ask."""
        _check_volume_id(volume_id)
        return self._store_new(_next_id(volume_id), lambda: Secret(os.urandom(DEK_BYTES)))

    def pending_dek(self, volume_id: str) -> Secret | None:
        """The replacement DEK `next_dek` made and `promote_next_dek` has not yet put in
        place, or None."""
        _check_volume_id(volume_id)
        try:
            return self.get_dek(_next_id(volume_id))
        except NotFound:
            return None

    def promote_next_dek(self, volume_id: str) -> None:
        """Make the replacement DEK the volume's DEK, in one transaction; without a
        replacement (a repeat) nothing changes."""
        _check_volume_id(volume_id)
        current_key, next_key = dek_key(volume_id), dek_key(_next_id(volume_id))
        for _ in range(_CAS_ATTEMPTS):
            loaded = self.loaded
            entry = self.store.get(next_key)
            if entry is None:
                return
            dek = self._unwrap(entry.value, _next_id(volume_id), loaded)
            blob = envelope.wrap(loaded.current, dek, volume_id)
            if self.store.txn(
                [Compare(next_key, entry.revision), Compare(KEYSET_KEY, loaded.revision)],
                [Put(current_key, blob), Delete(next_key)],
            ):
                return
            self.refresh_if_stale(loaded)
        raise Aborted(f"the data key of volume {volume_id} kept changing while replacing it")

    def _store_new(self, key_id: str, make: Callable[[], Secret]) -> Secret:
        """Wrap and store the DEK `make()` gives under `key_id` unless one is there already;
        return the stored DEK. A DEK is never replaced in place."""
        key = dek_key(key_id)
        for _ in range(_CAS_ATTEMPTS):
            loaded = self.loaded
            entry = self.store.get(key)
            if entry is not None:
                return self._unwrap(entry.value, key_id, loaded)
            dek = make()
            try:
                blob = envelope.wrap(loaded.current, dek, key_id)
            except Exception:
                self.metrics.wrap_errors.inc()
                raise
            if self.store.txn(
                [Compare(key, 0), Compare(KEYSET_KEY, loaded.revision)], [Put(key, blob)]
            ):
                return dek
            self.refresh_if_stale(loaded)
        raise Aborted(f"the data key of {key_id} kept changing while creating it; retry")

    def _unwrap(self, raw: bytes, volume_id: str, loaded: LoadedKeySet) -> Secret:
        try:
            kek_id = envelope.peek_kek_id(raw, what=f"volume {volume_id}")
            if kek_id not in loaded.keks:
                # A rotation may have happened since this replica loaded its key set.
                loaded = self.refresh_if_stale(loaded)
            return envelope.unwrap(raw, volume_id, loaded.find)
        except CryptvolError:
            self.metrics.unwrap_errors.inc()
            raise


def stored_dek_ids(store: Store) -> list[str]:
    """The ids of the volumes and snapshots the store holds a wrapped DEK for, a pending
    replacement's (`next_dek`) under its owner's id; needs no KEK."""
    return sorted({entry.key[len(DEK_PREFIX):].removesuffix(NEXT_SUFFIX)
                   for entry in store.range(DEK_PREFIX)})


def _next_id(volume_id: str) -> str:
    # Volume and snapshot ids never hold '+', so the replacement's id is nobody's own.
    return volume_id + NEXT_SUFFIX


def _check_volume_id(volume_id: str) -> None:
    if not volume_id or "\x00" in volume_id:
        raise InvalidArgument("a data key needs a non-empty volume id without NUL bytes")


def open_local(state_dir: Path) -> tuple[SqliteStore, KeyManager]:
    """The embedded setup: `<state_dir>/cryptvol.db` and the KEK file beside it."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(state_dir / DB_FILE)
    try:
        return store, KeyManager(store, LocalKekProvider(state_dir))
    except BaseException:
        store.close()
        raise
