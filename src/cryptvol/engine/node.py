"""The node side of a volume's life: stage, publish, expand, measure, unpublish, unstage.

Each step inspects what is already there (loop attached, mapping open, filesystem made,
mount in place) and does only what is missing, so a retry after a crash converges. A device
is formatted only when proven blank; a volume that holds data is opened, never reformatted.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

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
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from cryptvol.keys.manager import KeyManager
from cryptvol.luks import cryptsetup, reencrypt
from cryptvol.luks.budget import CRYPTSETUP_PROCESS_KIB
from cryptvol.luks.cryptsetup import FormatOptions, OpenOptions
from cryptvol.luks.policy import LuksPlan, parse_luks_parameters
from cryptvol.luks.token import write_policy_token
from cryptvol.mounts import filesystem
from cryptvol.mounts.modes import OpenedVolume, PublishOptions
from cryptvol.pools.base import NodeAttacher
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state.records import VolumeRecord
from cryptvol.state.repository import VolumeRepository
from cryptvol.system import failpoints
from cryptvol.system.devices import device_size, require_blank
from cryptvol.system.secret import Secret

NODE_EXPAND_SECRET_KEYS = (
    "csi.storage.k8s.io/node-expand-secret-name",
    "csi.storage.k8s.io/node-expand-secret-namespace",
)
log = logging.getLogger(__name__)


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
                f"the secret given to {purpose} has no key {record.secret_key!r} "
                "(the StorageClass's secretKey); it holds: " + ", ".join(sorted(secrets))
            )
        return Secret(value.encode())

    def _require(self, volume_id: str) -> VolumeRecord:
        if not is_volume_id(volume_id):
            raise NotFound(f"volume {volume_id} does not exist")
        return self.volumes.require(volume_id)

    def _attacher(self, record: VolumeRecord) -> NodeAttacher:
        return self.pools.of_volume(record.id, record.pool).node

    # --- NodeStageVolume --------------------------------------------------------------------
    def stage(self, volume_id: str, staging_path: str, cap: Capability,
              secrets: Mapping[str, str]) -> None:
        _require_parent(staging_path, "staging_target_path")
        with self.locks.hold(volume_id, "NodeStageVolume"):
            record = self.volumes.require(volume_id)
            key = self._key(record, secrets, "NodeStageVolume")
            attacher = self._attacher(record)
            device = attacher.attach(volume_id)
            name = cryptsetup.mapping_name(volume_id)
            if record.rekey:
                record = self.first_stage.take_own_key(record, device, _plan_of(record).format)
                key = self._key(record, secrets, "NodeStageVolume")
            if not cryptsetup.is_active(name):
                if self._open(record, device, name, key) and record.reencrypt == "pending":
                    # A copy of a never staged volume is blank: formatted now, its volume
                    # key is its own already.
                    self.first_stage.finished(volume_id)
                    record = self.volumes.require(volume_id)
            else:
                self.first_stage.check_restage(record, name)
            self._fit_mapping(record, name, attacher.refresh(volume_id), lambda: key)
            opened = _opened(record, cap.fs_type)
            size = device_size(opened.device)
            # Expanded while not staged: the filesystem catches up now.
            mode = self.modes.for_request(cap, direct=bool(record.kata_direct))
            mode.stage(opened, staging_path, cap.mount_flags,
                       grow=record.node_capacity_bytes < size)
            if record.node_capacity_bytes != size:
                self._record_node_capacity(volume_id, size)
            self.first_stage.reencrypt(record, device, size, key, _plan_of(record).format)

    def _record_node_capacity(self, volume_id: str, size: int) -> None:
        def grown(r: VolumeRecord) -> VolumeRecord:
            return r.model_copy(update={"node_capacity_bytes": size})

        self.volumes.update(volume_id, grown)

    def _open(self, record: VolumeRecord, device: str, name: str, key: Secret) -> bool:
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
        with self.locks.hold(volume_id, "NodeUnstageVolume"):
            record = self._require(volume_id)
            # A reencryption stops at a safe point and resumes at the next stage; one a crash
            # interrupted is made safe to unmount and close first.
            self.reencryptions.stop(volume_id)
            reencrypt.release_interrupted(cryptsetup.mapping_name(volume_id))
            opened = _opened(record)
            for mode in self.modes.all:
                mode.unstage(opened, staging_path)
            cryptsetup.close_device(cryptsetup.mapping_name(volume_id))
            self._attacher(record).detach(volume_id)

    # --- NodePublishVolume ------------------------------------------------------------------
    def publish(self, volume_id: str, staging_path: str, target_path: str, cap: Capability,
                read_only: bool, context: Mapping[str, str] | None = None) -> None:
        _require_parent(target_path, "target_path")
        with self.locks.hold(volume_id, "NodePublishVolume"):
            record = self.volumes.require(volume_id)
            if not cryptsetup.is_active(cryptsetup.mapping_name(volume_id)):
                raise FailedPrecondition(f"volume {volume_id} is not staged on this node")
            # A volume direct from its creation needs no API call; otherwise the pod may
            # make it direct, and an unreadable pod stops the publish (Unavailable).
            pod = NOT_READ if record.kata_direct else self.direct.at_publish(cap, context or {})
            trigger = _trigger(record, pod)
            mode = self.modes.for_request(cap, direct=trigger is not None)
            direct = trigger if mode is self.modes.kata else None  # raw block never is
            opened = _opened(record, cap.fs_type)
            if direct is not None:
                check_direct_access([cap], direct, FailedPrecondition)
            else:
                self.modes.kata.refuse_if_direct(opened)
            options = PublishOptions(cap.mount_flags, cap.mount_group,
                                     pod.fs_group_change_policy)
            mode.publish(opened, staging_path, target_path, read_only or cap.read_only_mode,
                         options)
            if direct is not None:
                log.info("kata direct volume published", extra={
                    "volume": volume_id, "trigger": direct, "target": target_path,
                    "handler": pod.handler})
                self.metrics.published_direct(volume_id, direct)

    # --- NodeUnpublishVolume ----------------------------------------------------------------
    def unpublish(self, volume_id: str, target_path: str) -> None:
        with self.locks.hold(volume_id, "NodeUnpublishVolume"):
            opened = _opened(self._require(volume_id))
            for mode in self.modes.all:
                if mode.unpublish(opened, target_path):
                    if mode is self.modes.kata:
                        log.info("kata direct volume unpublished",
                                 extra={"volume": volume_id, "target": target_path})
                        self.metrics.unpublished_direct(volume_id)
                    break

    # --- NodeExpandVolume -------------------------------------------------------------------
    def expand(self, volume_id: str, volume_path: str, required: int, limit: int,
               secrets: Mapping[str, str]) -> int:
        """Grow the backing volume to the size asked, then the mapping and what the workload
        sees. Pools are node-local, so the node grows the backing volume itself: the driver
        offers no controller expansion (see docs/architecture.md)."""
        with self.locks.hold(volume_id, "NodeExpandVolume"):
            record = self.volumes.require(volume_id)
            if not os.path.exists(volume_path):
                raise NotFound(f"volume path {volume_path} does not exist")
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
                if mode.grow(opened, volume_path):
                    break
            size = device_size(opened.device)
            self._record_node_capacity(volume_id, size)
            return size

    def _grow_backing(self, record: VolumeRecord, capacity: int) -> VolumeRecord:
        pool = self.pools.of_volume(record.id, record.pool)
        pool.provisioner.expand(record.id, capacity + LUKS2_HEADER_BYTES)
        failpoints.reached("expand:after-backing")

        def grown(r: VolumeRecord) -> VolumeRecord:
            return r.model_copy(update={"capacity_bytes": capacity,
                                        "backing_bytes": capacity + LUKS2_HEADER_BYTES})

        return self.volumes.update(record.id, grown)

    # --- NodeGetVolumeStats -----------------------------------------------------------------
    def stats(self, volume_id: str, volume_path: str) -> VolumeStats:
        record = self._require(volume_id)
        if not os.path.exists(volume_path):
            raise NotFound(f"volume path {volume_path} does not exist")
        open_ = cryptsetup.is_active(cryptsetup.mapping_name(volume_id))
        block = stat.S_ISBLK(os.stat(volume_path).st_mode)
        usage = None
        if open_:
            opened = _opened(record)
            usage = next((u for m in self.modes.all if (u := m.usage(opened, volume_path))),
                         None)
        condition = _condition(open_, usage is not None)
        reencryption = self.reencryptions.describe(volume_id)
        if not reencryption and open_ and record.reencrypt == "pending":
            reencryption = ("the reencryption to a new volume key has not finished; it "
                            "resumes at the next stage")
        if reencryption:
            condition = f"{condition}; {reencryption}"
        return VolumeStats(usage or filesystem.Usage(0, 0, 0, 0, 0, 0), block,
                           usage is None, condition)


def _trigger(record: VolumeRecord, pod: PodVerdict) -> Trigger | None:
    return recorded(record.kata_direct) or pod.trigger


def release_interrupted_reencryptions() -> None:
    """At start: reencryptions a crash interrupted may have left I/O hanging on a suspended
    device; let it fail instead, so the volume can be unstaged and staged again."""
    for helper in sorted(cryptsetup.MAPPER_DIR.glob("cryptvol-*-hotzone-forward")):
        reencrypt.release_interrupted(helper.name.removesuffix("-hotzone-forward"))


def _opened(record: VolumeRecord, fs_type: str = "") -> OpenedVolume:
    name = cryptsetup.mapping_name(record.id)
    return OpenedVolume(record.id, str(cryptsetup.mapping_path(name)), fs_type or record.fs_type)


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


def _condition(open_: bool, mounted: bool) -> str:
    if not open_:
        return "the dm-crypt mapping of this volume is gone; restage the volume"
    if not mounted:
        return "the volume is not mounted at the path; republish the volume"
    return "the volume is mounted and its mapping is open"


def _require_parent(path: str, field: str) -> None:
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"{field} must be an absolute path")
    parent = os.path.dirname(path.rstrip("/"))
    if not os.path.isdir(parent):
        raise NotFound(f"{field} {path}: its parent directory {parent} does not exist")
