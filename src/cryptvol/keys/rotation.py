"""Staged KEK rotation: prepare → rotate → reencrypt, persisted and compare-and-swapped.

Stages, in the key-set record (`keyset`):
    start → prepare → rotate → reencrypt_request → reencrypt_active → reencrypt_finished
`prepare` (from start or reencrypt_finished) adds a new KEK that every replica loads but none
wraps with; `rotate` (from prepare) makes it current, keeping the old one to unwrap;
`reencrypt` (from rotate) re-wraps every DEK under the current KEK and then retires the
others, unless a KMS plugin used one of them within the retire grace (`usage`): what the
plugin encrypted lives in kube-apiserver's store, which only the operator can rewrite.
Each transition first waits until every live replica reports the key set of the
present stage (bounded), and then changes the record by compare-and-swap: two operators, or
an operator and a crashed-and-restarted one, can never both apply it.

Reencrypt walks the DEKs in key order in batches. Each batch is one transaction with a
compare on every DEK's revision and on the key-set record, so a volume deleted meanwhile is
not brought back, and one created meanwhile (already under the current KEK: every replica
agreed on the rotation before reencrypt began, and creating a DEK compares the key-set
record too) is not touched. A persisted cursor records how far committed batches reach, so
a crashed reencrypt resumes there. Before retiring the old KEKs a last pass re-reads every
DEK not written since reencrypt began and re-wraps any that still names an old KEK.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from cryptvol.errors import Aborted, FailedPrecondition, InvalidArgument
from cryptvol.keys import envelope
from cryptvol.keys.kek import KekProvider, new_kek_id
from cryptvol.keys.keyset import (
    DEK_PREFIX,
    KEYSET_KEY,
    KekRecord,
    KeySetRecord,
    Retired,
)
from cryptvol.keys.manager import LoadedKeySet, check_sealer, load_key_set
from cryptvol.keys.metrics import KeyMetrics
from cryptvol.keys.replicas import await_agreement
from cryptvol.keys.status import (
    ALLOWED_NEXT,
    REENCRYPT_KEY,
    ReencryptState,
    Status,
    read_cursor,
    read_key_set,
    read_status,
)
from cryptvol.keys.usage import DEFAULT_RETIRE_GRACE, LastUse, recently_used
from cryptvol.store.base import Compare, Entry, Put, Store

log = logging.getLogger(__name__)

CURSOR_EVERY = 0.5  # seconds between saves of the reencrypt cursor
DEFAULT_WAIT = 30.0

Progress = Callable[[int, int], None]


class Rotation:
    """Drives the stages. `provider` is needed for prepare and reencrypt, not for status."""

    def __init__(
        self,
        store: Store,
        provider: KekProvider | None = None,
        metrics: KeyMetrics | None = None,
    ) -> None:
        self.store = store
        self._provider = provider
        self.metrics = metrics if metrics is not None else KeyMetrics()

    @property
    def provider(self) -> KekProvider:
        if self._provider is None:
            raise InvalidArgument("this operation needs the KEK provider")
        return self._provider

    # -- reading ----------------------------------------------------------------------------

    def read(self) -> tuple[KeySetRecord, int]:
        return read_key_set(self.store)

    def cursor(self) -> tuple[ReencryptState | None, int]:
        return read_cursor(self.store)

    def status(self) -> Status:
        return read_status(self.store)

    # -- transitions --------------------------------------------------------------------------

    def _check_stage(self, record: KeySetRecord, command: str, force: bool) -> None:
        allowed = [s for s, nxt in ALLOWED_NEXT.items() if command in nxt]
        if record.stage in allowed:
            return
        message = (
            f"cannot {command}: the stage is {record.stage}; allowed next from there: "
            + ", ".join(ALLOWED_NEXT[record.stage])
        )
        if not force:
            raise FailedPrecondition(message + f" (--force skips this check: {FORCE_SKIPS})")
        log.warning("forced: %s", message)

    def _agree(self, record: KeySetRecord, force: bool, wait: float) -> None:
        if force:
            log.warning("forced: not waiting for replicas to agree on %s", record.report())
            return
        await_agreement(self.store, record, wait=wait)

    def _swap(self, old_revision: int, new: KeySetRecord, *extra: Put) -> int:
        if not self.store.txn(
            [Compare(KEYSET_KEY, old_revision)], [Put(KEYSET_KEY, new.to_bytes()), *extra]
        ):
            raise Aborted("the key set changed while this transition ran; run it again")
        self.metrics.observe_key_set(new)
        entry = self.store.get(KEYSET_KEY)
        return entry.revision if entry else 0

    def prepare(self, *, force: bool = False, wait: float = DEFAULT_WAIT) -> KekRecord:
        record, revision = self.read()
        self._check_stage(record, "prepare", force)
        sealer = check_sealer(record, self.provider)
        self.forget_retired()
        if record.by_role("prepared"):
            raise FailedPrecondition(
                f"KEK {record.by_role('prepared')[0].id} is already prepared; rotate to it"
            )
        self._agree(record, force, wait)
        kek, ref = self.provider.create(new_kek_id())
        added = KekRecord(kek.id, kek.created, kek.fingerprint, ref, "prepared")
        moved = record.moved("prepare", (*record.keks, added), time.time(), sealed_by=sealer)
        try:
            self._swap(revision, moved)
        except Aborted:
            self.provider.discard(kek.id)
            raise
        log.info("prepared KEK %s", kek.id)
        return added

    def rotate(self, *, force: bool = False, wait: float = DEFAULT_WAIT) -> KekRecord:
        record, revision = self.read()
        self._check_stage(record, "rotate", force)
        prepared = record.by_role("prepared")
        if not prepared:
            raise FailedPrecondition("no KEK is prepared to rotate to; run cryptvol keys prepare")
        self._agree(record, force, wait)
        new_id = prepared[0].id
        keks = tuple(
            replace(k, role="current" if k.id == new_id else "previous")
            if k.role in ("current", "prepared")
            else k
            for k in record.keks
        )
        self._swap(revision, record.moved("rotate", keks, time.time()))
        log.info("rotated to KEK %s", new_id)
        return replace(prepared[0], role="current")

    def reencrypt(
        self,
        *,
        force: bool = False,
        wait: float = DEFAULT_WAIT,
        batch: int = 0,
        progress: Progress | None = None,
        retire_grace: float = DEFAULT_RETIRE_GRACE,
    ) -> ReencryptState:
        """Run (or resume) reencrypt through to reencrypt_finished; return the final cursor.

        Before retiring, a KEK a KMS plugin used within `retire_grace` seconds stops it with
        FailedPrecondition (unless `force`): every DEK is re-wrapped by then and the stage
        stays reencrypt_active, so running it again later only retires.

        Run again once finished, it only forgets retired KEK material that a crash between
        retiring and forgetting may have left, and returns the finished cursor."""
        record, revision = self.read()
        if record.stage == "reencrypt_finished" and not force:
            self.forget_retired()
            state, _ = self.cursor()
            if state is not None and state.finished:
                return state
        self._check_stage(record, "reencrypt", force)
        if record.stage not in ("reencrypt_request", "reencrypt_active"):
            self._agree(record, force, wait)
            now = time.time()
            state = ReencryptState(
                "", 0, self.store.count(DEK_PREFIX), 0, record.current.id, now, now
            )
            revision = self._swap(
                revision,
                record.moved("reencrypt_request", record.keks, now),
                Put(REENCRYPT_KEY, state.to_bytes()),
            )
            record, revision = self.read()
        if record.stage == "reencrypt_request":
            self._agree(record, force, wait)
            self._swap(revision, record.moved("reencrypt_active", record.keks, time.time()))
            record, revision = self.read()
        if record.stage != "reencrypt_active":
            raise Aborted(
                f"the stage moved to {record.stage} while reencrypt started; run it again"
            )
        loaded = load_key_set(self.store, self.provider, create=False)
        if loaded.revision != revision:
            raise Aborted("the key set changed while reencrypt started; run it again")
        state = self._walk(loaded, batch or _batch_size(self.store), progress)
        self._sweep(loaded, progress, state)
        self._agree(loaded.record, force, wait)
        self._check_kms_use(loaded, force, retire_grace)
        return self._finish(loaded)

    def _walk(self, loaded: LoadedKeySet, batch: int, progress: Progress | None) -> ReencryptState:
        """Re-wrap every DEK after the persisted cursor, batch by batch, in key order.

        Reading, unwrapping and wrapping happen here; each batch's transaction goes to a
        small pool of writers, so the store's commit latency (an fsync, a raft round) overlaps
        the next batch's work. The cursor moves only past batches that have committed, in
        order, and is saved at most every CURSOR_EVERY seconds: after a crash the batches
        since then are read again and found already current, which costs a read, not a key.
        """
        target = loaded.record.current.id
        state, cursor_rev = self.cursor()
        if state is None or state.target != target:
            now = time.time()
            state = ReencryptState("", 0, self.store.count(DEK_PREFIX), 0, target, now, now)
            cursor_rev = self._save_cursor(loaded, state, 0)
        writers = max(1, int(getattr(self.store, "concurrent_writers", 2)))
        read = max(batch * writers, int(getattr(self.store, "range_page", 0)))
        pending: deque[tuple[Future[None], ReencryptState]] = deque()
        last_save = time.monotonic()
        ahead = state
        with ThreadPoolExecutor(writers, thread_name_prefix="reencrypt") as pool:
            while True:
                # One read feeds every writer (more when the store reads cheaper in larger
                # pages); each batch is one transaction.
                page = self.store.range(DEK_PREFIX, start_after=ahead.cursor, limit=read)
                for at in range(0, len(page), batch):
                    entries = page[at : at + batch]
                    blobs = self._rewrapped(entries, loaded)
                    changed = [(e, b) for e, b in zip(entries, blobs, strict=True) if b]
                    ahead = replace(
                        ahead,
                        cursor=entries[-1].key,
                        done=ahead.done + len(entries),
                        total=max(ahead.total, ahead.done + len(entries)),
                        rewrapped=ahead.rewrapped + len(changed),
                    )
                    pending.append((pool.submit(self._commit_batch, loaded, changed), ahead))
                entries = page
                while pending and (not entries or len(pending) >= writers or pending[0][0].done()):
                    future, committed = pending.popleft()
                    future.result()
                    state = replace(committed, updated=time.time())
                    if not pending or time.monotonic() - last_save >= CURSOR_EVERY:
                        cursor_rev = self._save_cursor(loaded, state, cursor_rev)
                        last_save = time.monotonic()
                    if progress is not None:
                        progress(state.done, state.total)
                    self.metrics.observe_reencrypt(state.done, state.total)
                if not entries:
                    return state

    def _commit_batch(self, loaded: LoadedKeySet, changed: list[tuple[Entry, bytes]]) -> None:
        """Replace each DEK of a batch by compare-and-swap; if any changed meanwhile (deleted,
        or re-wrapped by another reencrypt), redo the batch one DEK at a time."""
        if not changed:
            return
        if self.store.txn(
            [Compare(KEYSET_KEY, loaded.revision)]
            + [Compare(e.key, e.revision) for e, _ in changed],
            [Put(e.key, blob) for e, blob in changed],
        ):
            return
        self._check_key_set(loaded)
        for e, _ in changed:
            self._rewrap_one(e.key, loaded)

    def _save_cursor(self, loaded: LoadedKeySet, state: ReencryptState, revision: int) -> int:
        """Persist the cursor by compare-and-swap; return its new revision."""
        for _ in range(10):
            if self.store.txn(
                [Compare(KEYSET_KEY, loaded.revision), Compare(REENCRYPT_KEY, revision)],
                [Put(REENCRYPT_KEY, state.to_bytes())],
            ):
                entry = self.store.get(REENCRYPT_KEY)
                return entry.revision if entry else 0
            self._check_key_set(loaded)
            theirs, revision = self.cursor()
            if (
                theirs is not None
                and theirs.target == state.target
                and theirs.cursor >= state.cursor
            ):
                return revision  # another reencrypt got further; keep its cursor
        raise Aborted("the reencrypt cursor kept changing; run cryptvol keys reencrypt again")

    def _check_key_set(self, loaded: LoadedKeySet) -> None:
        entry = self.store.get(KEYSET_KEY)
        if entry is None or entry.revision != loaded.revision:
            raise Aborted("the key set changed during reencrypt; run cryptvol keys reencrypt again")

    def _rewrap_one(self, key: str, loaded: LoadedKeySet) -> bool:
        """Re-wrap one DEK by compare-and-swap until it is current or gone."""
        for _ in range(50):
            e = self.store.get(key)
            if e is None:
                return False  # deleted meanwhile: never brought back
            blob = self._rewrapped([e], loaded)[0]
            if blob is None:
                return False
            if self.store.txn(
                [Compare(KEYSET_KEY, loaded.revision), Compare(key, e.revision)], [Put(key, blob)]
            ):
                return True
            self._check_key_set(loaded)
        raise Aborted(f"the data key {key} kept changing during reencrypt; run it again")

    def _rewrapped(self, entries: list[Entry], loaded: LoadedKeySet) -> list[bytes | None]:
        """Each DEK in `entries` wrapped under the current KEK, or None where it already is."""
        try:
            return envelope.rewrap_many(
                [(e.key[len(DEK_PREFIX) :], e.value) for e in entries],
                loaded.find,
                loaded.current,
            )
        except Exception:
            self.metrics.unwrap_errors.inc()
            raise

    def _sweep(
        self, loaded: LoadedKeySet, progress: Progress | None, state: ReencryptState
    ) -> None:
        """Last pass before retiring: every DEK must name the current KEK.

        Only DEKs last written at or before the key-set record's revision are read: any
        write after it was made under this key set (creating a DEK compares the record's
        revision), so it is a re-wrap by this walk or a DEK made under the current KEK."""
        current = loaded.record.current.id
        for e in self.store.range(DEK_PREFIX, max_revision=loaded.revision):
            if not envelope.names_kek(e.value, current):
                log.info("sweep: re-wrapping %s", e.key)
                self._rewrap_one(e.key, loaded)
        if progress is not None:
            progress(state.total, state.total)

    def _check_kms_use(self, loaded: LoadedKeySet, force: bool, grace: float) -> None:
        old = [k.id for k in loaded.record.by_role("previous")]
        busy = recently_used(self.store, old, grace)
        if not busy:
            return
        message = kms_use_message(busy, loaded.record.current.id, grace)
        if not force:
            raise FailedPrecondition(message + " (--force retires it now)")
        log.warning("forced: %s", message)

    def _finish(self, loaded: LoadedKeySet) -> ReencryptState:
        now = time.time()
        record = loaded.record
        old = record.by_role("previous")
        keks = tuple(k for k in record.keks if k.role != "previous")
        retired = (*record.retired, *(Retired(k.id, k.fingerprint, now) for k in old))
        state, _ = self.cursor()
        # A resumed run walks again what a crashed one committed after its last cursor save,
        # so the cursor's counts fall short: the finished one says what the store holds.
        held = self.store.count(DEK_PREFIX)
        final = replace(state, done=held, total=held, finished=True, updated=now) if state else None
        extra = [Put(REENCRYPT_KEY, final.to_bytes())] if final else []
        self._swap(
            loaded.revision, record.moved("reencrypt_finished", keks, now, retired=retired), *extra
        )
        for k in old:
            self.provider.discard(k.id)
        # The retired KEKs' sealed material and the DEKs re-wrapped from them are still in
        # the store's history until it forgets it.
        self.store.forget_history()
        log.info("reencrypt finished; retired %s", ", ".join(k.id for k in old) or "nothing")
        return final or ReencryptState("", 0, 0, 0, record.current.id, now, now, True)

    def forget_retired(self) -> None:
        """Drop retired KEK material a crash may have left behind, in the provider and in
        the store's history (idempotent)."""
        record, _ = self.read()
        for r in record.retired:
            self.provider.discard(r.id)
        if record.retired:
            self.store.forget_history()


FORCE_SKIPS = (
    "the stage order and the wait for every replica to agree, and the KMS plugins' retire grace"
)
REWRITE_SECRETS = "kubectl get secrets -A -o json | kubectl replace -f -"


def kms_use_message(busy: list[LastUse], current: str, grace: float) -> str:
    now = time.time()
    uses = "; ".join(
        f"KEK {u.kek_id} was used by KMS plugin {u.replica} {now - u.time:.0f}s ago" for u in busy
    )
    return (
        f"every DEK is re-wrapped under {current}, but the old KEK cannot be retired yet: {uses}"
        f" (retire grace {grace:g}s). kube-apiserver's stored Secrets may still be encrypted"
        f" under it: rewrite them ({REWRITE_SECRETS}) and run cryptvol keys reencrypt again"
        " once no plugin has used the old KEK for the retire grace"
    )


def deks_per_kek(store: Store) -> Counter[str]:
    """How many wrapped DEKs the store holds under each KEK id ("unreadable": envelopes
    that do not parse), read page by page."""
    counts: Counter[str] = Counter()
    after = ""
    while entries := store.range(DEK_PREFIX, start_after=after, limit=1000):
        for e in entries:
            try:
                counts[envelope.peek_kek_id(e.value, what=e.key)] += 1
            except FailedPrecondition:
                counts["unreadable"] += 1
        after = entries[-1].key
    return counts


def _batch_size(store: Store) -> int:
    # One compare of every batch is on the key-set record.
    limit = int(getattr(store, "max_txn_ops", 1001))
    return max(1, min(1000, limit - 1))
