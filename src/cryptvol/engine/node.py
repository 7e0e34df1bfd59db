"""The node side of a volume's life: stage, publish, expand, measure, unpublish, unstage.

Each step inspects what is already there (loop attached, mapping open, filesystem made,
mount in place) and does only what is missing, so a retry after a crash converges. A device
is formatted only when proven blank; a volume that holds data is opened, never reformatted.

Every step keeps the two node rules. It acts only on what belongs to its volume: request
paths pass `mounts.paths` (absolute, no `..`, no symlink, inside kubelet's dir), and a path
holding a mount that is not this volume's (by device number) is refused before anything is
done. And a call that fails undoes what it did itself: a stage that cannot finish detaches
the loop device it attached and closes the mapping it opened.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from cryptvol.engine.capacity import CapacityLedger
from cryptvol.engine.direct import (
    NOT_READ,
    DirectTriggers,
    PodVerdict,
    Trigger,
    check_direct_access,
    recorded,
)
from cryptvol.engine.first_stage import FirstStage
from cryptvol.engine.ids import is_volume_id
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.metrics import NodeMetrics
from cryptvol.engine.publishing import PublishModes
from cryptvol.engine.reencryptions import Reencryptions
from cryptvol.engine.sizes import LUKS2_HEADER_BYTES, capacity_for
from cryptvol.engine.types import Capability
from cryptvol.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    quoted,
)
from cryptvol.keys.manager import KeyManager
from cryptvol.luks import cryptsetup, reencrypt
from cryptvol.luks.budget import CRYPTSETUP_PROCESS_KIB
from cryptvol.luks.cryptsetup import FormatOptions, OpenOptions
from cryptvol.luks.policy import LuksPlan, parse_luks_parameters
from cryptvol.luks.token import write_policy_token
from cryptvol.mounts import filesystem
from cryptvol.mounts.modes import OpenedVolume, PublishOptions
from cryptvol.mounts.mountinfo import Mount
from cryptvol.mounts.paths import DEFAULT_KUBELET_DIR, KUBELET, NodePath, PathGuard
from cryptvol.pools.base import NodeAttacher, WriteState
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state.records import VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.system import failpoints
from cryptvol.system.devices import device_size, dm_suspended, kernel_name, require_blank
from cryptvol.system.kernel_log import KernelLog
from cryptvol.system.secret import Secret

log = logging.getLogger(__name__)

NODE_EXPAND_SECRET_KEYS = (
    "csi.storage.k8s.io/node-expand-secret-name",
    "csi.storage.k8s.io/node-expand-secret-namespace",
)


class UnlockBudget(Protocol):
    def reserve(self, kib: int, timeout: float, what: str = ...
                ) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class VolumeStats:
    usage: filesystem.Usage
    block: bool
    abnormal: bool
    message: str


class NodeEngine:
    def __init__(
        self,
        volumes: VolumeRepository,
        keys: KeyManager,
        pools: PoolRegistry,
        node_id: str,
        locks: OperationLocks,
        modes: PublishModes,
        direct: DirectTriggers,
        budget: UnlockBudget | None = None,
        budget_timeout: float = 60.0,
        metrics: NodeMetrics | None = None,
        paths: PathGuard | None = None,
        ledger: CapacityLedger | None = None,
    ) -> None:
        self.volumes = volumes
        self.modes = modes
        self.direct = direct
        self.metrics = metrics or NodeMetrics()
        self.keys = keys
        self.pools = pools
        self.node_id = node_id
        self.locks = locks
        self.budget = budget
        self.budget_timeout = budget_timeout
        self.paths = paths or PathGuard({KUBELET: DEFAULT_KUBELET_DIR})
        self.ledger = ledger or CapacityLedger(volumes, node_id)
        self.kernel_log = KernelLog()
        self.reencryptions = Reencryptions(on_finished=lambda v: self.first_stage.finished(v))
        self.first_stage = FirstStage(volumes, keys, self.reencryptions)

    # --- keys -----------------------------------------------------------------------------
    def _key(self, record: VolumeRecord, secrets: Mapping[str, str], purpose: str) -> Secret:
        if record.key_source == "managed":
            return self.keys.get_dek(record.id)
        if not secrets:
            hint = ""
            if purpose == "NodeExpandVolume":
                hint = (" Set " + " and ".join(NODE_EXPAND_SECRET_KEYS) +
                        " in the StorageClass so kubelet passes the passphrase.")
            else:
                hint = (" Set csi.storage.k8s.io/node-stage-secret-name and -namespace in the"
                        " StorageClass.")
            raise InvalidArgument(
                f"volume {record.id} is unlocked by a passphrase and {purpose} got no "
                f"secrets.{hint}"
            )
        value = secrets.get(record.secret_key)
        if not value:
            raise InvalidArgument(
                f"the secret given to {purpose} has no key {quoted(record.secret_key)} "
                "(the StorageClass's secretKey); it holds: " + ", ".join(sorted(secrets))
            )
        return Secret(value.encode())

    def _require(self, volume_id: str) -> VolumeRecord:
        if not is_volume_id(volume_id):
            raise NotFound(f"volume {quoted(volume_id)} does not exist")
        return self.volumes.require(volume_id)

    def _attacher(self, record: VolumeRecord) -> NodeAttacher:
        return self.pools.of_volume(record.id, record.pool).node

    # --- NodeStageVolume --------------------------------------------------------------------
    def stage(self, volume_id: str, staging_path: str, cap: Capability,
              secrets: Mapping[str, str]) -> None:
        staging = _directory(self.paths.check(staging_path, "staging_target_path"))
        with self.locks.hold(volume_id, "NodeStageVolume"):
            record = self._require(volume_id)
            key = self._key(record, secrets, "NodeStageVolume")
            _refuse_foreign(_opened(record, cap.fs_type), staging, FailedPrecondition)
            attacher = self._attacher(record)
            name = cryptsetup.mapping_name(volume_id)
            undo = _Undo()
            try:
                if attacher.attached_device(volume_id) is None:
                    device = attacher.attach(volume_id)
                    undo.push(lambda: attacher.detach(volume_id))
                    self.kernel_log.forget([kernel_name(device)])
                else:
                    device = attacher.attach(volume_id)
                if record.rekey:
                    # Each of its steps resumes where a failure stopped it: nothing to undo.
                    record = self.first_stage.take_own_key(record, device,
                                                           _plan_of(record).format)
                    key = self._key(record, secrets, "NodeStageVolume")
                if not cryptsetup.is_active(name):
                    formatted = self._open(record, attacher, device, name, key)
                    undo.push(lambda: cryptsetup.close_device(name))
                    self.kernel_log.forget([kernel_name(str(cryptsetup.mapping_path(name)))])
                    if formatted and record.reencrypt == "pending":
                        # A copy of a never staged volume is blank: formatted now, its
                        # volume key is its own already.
                        self.first_stage.finished(volume_id)
                        record = self.volumes.require(volume_id)
                else:
                    self.first_stage.check_restage(record, name)
                self._fit_mapping(record, name, attacher.refresh(volume_id), lambda: key)
                opened = _opened(record, cap.fs_type)
                size = device_size(opened.device)
                # Expanded while not staged: the filesystem catches up now.
                mode = self.modes.for_request(cap, direct=bool(record.kata_direct))
                mode.stage(opened, staging, cap.mount_flags,
                           grow=record.node_capacity_bytes < size)
            except BaseException:
                undo.run()
                raise
            if record.node_capacity_bytes != size:
                self._record_node_capacity(volume_id, size)
            self.first_stage.reencrypt(record, device, size, key, _plan_of(record).format)

    def _record_node_capacity(self, volume_id: str, size: int) -> None:
        def grown(r: VolumeRecord) -> VolumeRecord:
            return r.model_copy(update={"node_capacity_bytes": size})

        self.volumes.update(volume_id, grown)

    def _open(self, record: VolumeRecord, attacher: NodeAttacher, device: str, name: str,
              key: Secret) -> bool:
        """Open the volume's LUKS2 mapping, formatting a blank device first; return whether
        it formatted."""
        luks_plan = _plan_of(record)
        formatted = cryptsetup.is_luks(device)
        waiting = time.monotonic()
        reservation = self._reserve(record, device if formatted else None)
        with reservation:
            if not isinstance(reservation, nullcontext):
                self.metrics.waited_for_budget(time.monotonic() - waiting)
            if not formatted:
                # The pool may know that nothing was ever written; else read all of it. A
                # copy holds its source's bytes, whatever its pool says of its blocks.
                if record.content_source is not None or \
                        attacher.written(record.id) is not WriteState.NEVER:
                    require_blank(device)
                cryptsetup.format_device(device, key, luks_plan.format)
                failpoints.reached("stage:after-format")
                write_policy_token(device, parse_luks_parameters(record.parameters),
                                   luks_plan)
            opening = time.monotonic()
            with _explain_wrong_key(record):
                cryptsetup.open_device(device, name, key, luks_plan.open)
            self.metrics.unlocked(str(luks_plan.format.pbkdf), time.monotonic() - opening)
            failpoints.reached("stage:after-open")
        return not formatted

    def _reserve(self, record: VolumeRecord, formatted: str | None
                 ) -> AbstractContextManager[None]:
        """Hold the unlock's memory from the node budget while cryptsetup runs.

        pbkdf2 keyslots (every managed volume) need none. For memory-hard ones the header
        of a formatted device is the authority: its keyslots may have been rewritten since
        the volume was planned."""
        if self.budget is None or not str(record.luks.format.get("pbkdf", "")).startswith(
                "argon2"):
            return nullcontext()
        kib = record.luks.unlock_memory_kib
        if formatted is not None:
            kib = cryptsetup.keyslot_memory_kib(formatted) + CRYPTSETUP_PROCESS_KIB
        return self.budget.reserve(kib, self.budget_timeout,
                                   what=f"NodeStageVolume {record.id}")

    def _fit_mapping(self, record: VolumeRecord, name: str, backing: int,
                     key_for: Callable[[], Secret]) -> bool:
        """Grow the mapping to fill `backing` bytes after an expansion (online or offline);
        return whether it grew. The key is asked for only when cryptsetup needs it: with the
        volume key in the kernel keyring."""
        if device_size(str(cryptsetup.mapping_path(name))) + LUKS2_HEADER_BYTES >= backing:
            return False
        status = cryptsetup.status(name)
        if status is None:
            raise FailedPrecondition(f"mapping {name} of volume {record.id} is not open")
        key = key_for() if status.key_location == "keyring" else None
        with _explain_wrong_key(record):
            cryptsetup.resize(name, key)
        return True

    # --- NodeUnstageVolume ------------------------------------------------------------------
    def unstage(self, volume_id: str, staging_path: str) -> None:
        staging = _directory(self.paths.check(staging_path, "staging_target_path"))
        with self.locks.hold(volume_id, "NodeUnstageVolume"):
            record = self._require(volume_id)
            # A reencryption stops at a safe point and resumes at the next stage; one a crash
            # interrupted is made safe to unmount and close first.
            self.reencryptions.stop(volume_id)
            reencrypt.release_interrupted(cryptsetup.mapping_name(volume_id))
            opened = _opened(record)
            _refuse_foreign(opened, staging, FailedPrecondition)
            # Everything is checked before anything is undone: a volume still published
            # keeps its staging mount and its mapping. (Copies of its mounts that propagation
            # shows outside kubelet's dir are not publications.) A Kata direct publication
            # mounts nothing on the host: its mountInfo.json names the mapping.
            elsewhere = [m.target for m in opened.mounts()
                         if m.target != staging.real and self.paths.inside(m.target)]
            elsewhere += self.modes.kata.targets(opened)
            if elsewhere:
                raise FailedPrecondition(
                    f"volume {volume_id} is still published at {quoted(elsewhere[0])}"
                    f"{f' and {len(elsewhere) - 1} more' if len(elsewhere) > 1 else ''}; "
                    "unpublish it first"
                )
            # A reencryption stops at a safe point and resumes at the next stage; one a crash
            # interrupted is made safe to unmount and close first.
            self.reencryptions.stop(volume_id)
            reencrypt.release_interrupted(cryptsetup.mapping_name(volume_id))
            for mode in self.modes.all:
                mode.unstage(opened, staging)
            cryptsetup.close_device(cryptsetup.mapping_name(volume_id))
            self._attacher(record).detach(volume_id)

    # --- NodePublishVolume ------------------------------------------------------------------
    def publish(self, volume_id: str, staging_path: str, target_path: str, cap: Capability,
                read_only: bool, context: Mapping[str, str] | None = None) -> None:
        staging = _directory(self.paths.check(staging_path, "staging_target_path"))
        target = self.paths.check(target_path, "target_path")
        with self.locks.hold(volume_id, "NodePublishVolume"):
            record = self._require(volume_id)
            opened = _opened(record, cap.fs_type)
            read_only = read_only or cap.read_only_mode
            _refuse_foreign(opened, target, AlreadyExists)
            published = [m for m in opened.mounts() if m.target == target.real]
            if published:
                if published[-1].read_only != read_only:
                    raise AlreadyExists(
                        f"target_path {quoted(target)} already publishes volume {volume_id} "
                        f"{'read-only' if published[-1].read_only else 'read-write'}"
                    )
                return  # published as asked already
            if not opened.is_open:
                raise FailedPrecondition(f"volume {volume_id} is not staged on this node")
            # A volume direct from its creation needs no API call; otherwise the pod may
            # make it direct, and an unreadable pod stops the publish (Unavailable).
            pod = NOT_READ if record.kata_direct else self.direct.at_publish(cap, context or {})
            trigger = _trigger(record, pod)
            mode = self.modes.for_request(cap, direct=trigger is not None)
            direct = trigger if mode is self.modes.kata else None  # raw block never is
            if direct is not None:
                check_direct_access([cap], direct, FailedPrecondition)
            else:
                self.modes.kata.refuse_if_direct(opened)
            options = PublishOptions(cap.mount_flags, cap.mount_group,
                                     pod.fs_group_change_policy)
            mode.publish(opened, staging, target, read_only, options)
            if direct is not None:
                log.info("kata direct volume published", extra={
                    "volume": volume_id, "trigger": direct, "target": str(target),
                    "handler": pod.handler})
                self.metrics.published_direct(volume_id, direct)

    # --- NodeUnpublishVolume ----------------------------------------------------------------
    def unpublish(self, volume_id: str, target_path: str) -> None:
        target = self.paths.check(target_path, "target_path")
        with self.locks.hold(volume_id, "NodeUnpublishVolume"):
            opened = _opened(self._require(volume_id))
            _refuse_foreign(opened, target, FailedPrecondition)
            for mode in self.modes.all:
                if mode.unpublish(opened, target):
                    if mode is self.modes.kata:
                        log.info("kata direct volume unpublished",
                                 extra={"volume": volume_id, "target": str(target)})
                        self.metrics.unpublished_direct(volume_id)
                    return
            if not target.exists():
                return  # not published there: done already
            raise FailedPrecondition(
                f"target_path {quoted(target)} holds something this driver did not make for "
                f"volume {volume_id}; it is left alone"
            )

    # --- NodeExpandVolume -------------------------------------------------------------------
    def expand(self, volume_id: str, volume_path: str, required: int, limit: int,
               secrets: Mapping[str, str]) -> int:
        """Grow the backing volume to the size asked, then the mapping and what the workload
        sees. Pools are node-local, so the node grows the backing volume itself: the driver
        offers no controller expansion (see docs/architecture.md)."""
        path = self.paths.check(volume_path, "volume_path")
        with self.locks.hold(volume_id, "NodeExpandVolume"):
            record = self._require(volume_id)
            if not path.exists():
                raise NotFound(f"volume_path {quoted(path)} does not exist")
            _refuse_foreign(_opened(record), path, FailedPrecondition)
            if limit and limit < record.capacity_bytes:
                raise OutOfRange(
                    f"limit {limit} is below the volume's current size {record.capacity_bytes};"
                    " volumes do not shrink"
                )
            target = capacity_for(required, limit, record.capacity_bytes)
            name = cryptsetup.mapping_name(volume_id)
            if not cryptsetup.is_active(name):
                raise FailedPrecondition(f"volume {volume_id} is not staged on this node")
            attacher = self._attacher(record)
            if attacher.attached_device(volume_id) is None:
                raise FailedPrecondition(f"volume {volume_id} is not attached on this node")
            if self.reencryptions.running(volume_id):
                raise Aborted(f"volume {volume_id} is being reencrypted to a new volume key; "
                              "it grows once that has finished")
            if target > record.capacity_bytes:
                record = self._grow_backing(record, target)
            backing = attacher.refresh(volume_id)
            if self._fit_mapping(record, name, backing,
                                 lambda: self._key(record, secrets, "NodeExpandVolume")):
                failpoints.reached("expand:after-resize")
            opened = _opened(record)
            for mode in self.modes.all:
                if mode.grow(opened, path):
                    break
            size = device_size(opened.device)
            self._record_node_capacity(volume_id, size)
            return size

    def _grow_backing(self, record: VolumeRecord, capacity: int) -> VolumeRecord:
        pool = self.pools.of_volume(record.id, record.pool)
        backing = capacity + LUKS2_HEADER_BYTES

        def grown(r: VolumeRecord) -> VolumeRecord:
            return r.model_copy(update={"capacity_bytes": capacity, "backing_bytes": backing})

        with self.ledger.promise(pool, backing - record.backing_bytes,
                                 f"growing volume {record.id} to {capacity} bytes"):
            pool.provisioner.expand(record.id, backing)
            failpoints.reached("expand:after-backing")
            return self.volumes.update(record.id, grown)

    # --- NodeGetVolumeStats -----------------------------------------------------------------
    def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        path = self.paths.check(volume_path, "volume_path")
        record = self._require(volume_id)
        if not path.exists():
            raise NotFound(f"volume_path {quoted(path)} does not exist")
        opened = _opened(record)
        _refuse_foreign(opened, path, FailedPrecondition)
        none = filesystem.Usage(0, 0, 0, 0, 0, 0)
        try:
            found = path.lstat()
            block = found is not None and stat.S_ISBLK(found.st_mode)
            problem = self._health(record, opened)
            usage = None
            # A suspended mapping's I/O waits: nothing is asked of it then.
            if opened.is_open and not dm_suspended(opened.device):
                usage = next((u for m in self.modes.all if (u := m.usage(opened, path))),
                             None)
                if usage is None:
                    problem = problem or (f"the volume is not mounted at {quoted(path)}; "
                                          "republish the volume")
                elif not block and problem is None:
                    mounted = next((m for m in opened.mounts() if m.target == path.real),
                                   None)
                    problem = _filesystem_health(opened, mounted)
        except OSError as exc:
            # Looking at a volume that fails fails too: an xfs that shut down answers EIO
            # even to a stat of its mountpoint.
            return VolumeStats(none, False, True,
                               f"the volume answers I/O errors ({exc.strerror}) at "
                               f"{quoted(path)}: its filesystem may have shut down; unstage "
                               "the volume and repair the filesystem")
        message = problem or "the volume is mounted and its mapping is open"
        reencryption = self.reencryptions.describe(volume_id)
        if not reencryption and opened.is_open and record.reencrypt == "pending":
            reencryption = ("the reencryption to a new volume key has not finished; it "
                            "resumes at the next stage")
        if reencryption:
            message = f"{message}; {reencryption}"
        return VolumeStats(usage or none, block, problem is not None, message)

    def _health(self, record: VolumeRecord, opened: OpenedVolume) -> str | None:
        """What is wrong below the filesystem: the mapping or the backing device."""
        if not opened.is_open:
            return "the dm-crypt mapping of this volume is gone; restage the volume"
        if dm_suspended(opened.device):
            return "the dm-crypt mapping of this volume is suspended: its I/O waits"
        devices = [kernel_name(opened.device)]
        backing = self._attacher(record).attached_device(record.id)
        if backing is not None:
            devices.append(kernel_name(backing))
        return self.kernel_log.errors(devices)


class _Undo:
    """What a call did, to undo in reverse order if it fails."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except Exception:
                # The failure being raised is what the caller must see; this one is logged.
                log.warning("undoing a failed step failed", exc_info=True)


def _directory(path: NodePath) -> NodePath:
    """A staging path is a directory the orchestrator made (or one this driver may make)."""
    try:
        found = path.lstat()
    except OSError:
        return path  # a mount whose filesystem answers errors: the mount checks decide
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise InvalidArgument(f"{path.field} {quoted(path)} is not a directory")
    return path


def _refuse_foreign(opened: OpenedVolume, path: NodePath,
                    error: type[FailedPrecondition] | type[AlreadyExists]) -> None:
    foreign = opened.foreign_mount_at(path)
    if foreign is not None:
        raise error(
            f"{path.field} {quoted(path)} holds a mount of {quoted(foreign.source)} that is "
            f"not volume {opened.volume_id}; it is left alone"
        )


def _filesystem_health(opened: OpenedVolume, mounted: Mount | None) -> str | None:
    if mounted is None or mounted.fs_type not in filesystem.SUPPORTED:
        return None
    return filesystem.health(opened.device, mounted.target, mounted.fs_type)


def _trigger(record: VolumeRecord, pod: PodVerdict) -> Trigger | None:
    return recorded(record.kata_direct) or pod.trigger


def release_interrupted_reencryptions() -> None:
    """At start: reencryptions a crash interrupted may have left I/O hanging on a suspended
    device; let it fail instead, so the volume can be unstaged and staged again."""
    for helper in sorted(cryptsetup.MAPPER_DIR.glob("cryptvol-*-hotzone-forward")):
        reencrypt.release_interrupted(helper.name.removesuffix("-hotzone-forward"))


def _opened(record: VolumeRecord, fs_type: str = "") -> OpenedVolume:
    name = cryptsetup.mapping_name(record.id)
    return OpenedVolume.of(record.id, str(cryptsetup.mapping_path(name)),
                           fs_type or record.fs_type)


def _plan_of(record: VolumeRecord) -> LuksPlan:
    """The plan a volume was created with, rebuilt from its record."""
    return LuksPlan(
        format=FormatOptions(**record.luks.format),  # type: ignore[arg-type]
        open=OpenOptions(**record.luks.open),  # type: ignore[arg-type]
        reasons=tuple(record.luks.reasons),
        unlock_memory_kib=record.luks.unlock_memory_kib,
        pbkdf_asked=record.luks.pbkdf_asked,
        fell_back=record.luks.fell_back,
    )


@contextmanager
def _explain_wrong_key(record: VolumeRecord) -> Iterator[None]:
    """A wrong passphrase is the caller's to fix (InvalidArgument); a managed key that does
    not open its own volume means the key store and the header disagree."""
    try:
        yield
    except cryptsetup.WrongKey:
        if record.key_source == "secret":
            raise InvalidArgument(
                f"the passphrase in the secret does not unlock volume {record.id}"
            ) from None
        raise FailedPrecondition(
            f"the managed key of volume {record.id} does not unlock its LUKS2 header; the "
            "key store and the volume disagree (restored from another backup?)"
        ) from None
