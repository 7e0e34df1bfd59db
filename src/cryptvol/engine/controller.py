"""The controller side of a volume's life: create, delete, expand, list, capacity.

Every step is idempotent and recorded before it is taken, so a CreateVolume or DeleteVolume
cut short by a crash finishes when the container orchestrator retries it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptvol import TOPOLOGY_KEY
from cryptvol.engine import copies
from cryptvol.engine.capabilities import asked_fs_type, check_capabilities, fs_type_for
from cryptvol.engine.capacity import CapacityLedger
from cryptvol.engine.direct import STORAGECLASS, DirectTriggers, check_direct_access, recorded
from cryptvol.engine.ids import is_volume_id, volume_id_for
from cryptvol.engine.locks import OperationLocks
from cryptvol.engine.parameters import VolumeParameters, parse_parameters
from cryptvol.engine.sizes import (
    LUKS2_HEADER_BYTES,
    capacity_for,
    copy_capacity,
    minimum_bytes,
)
from cryptvol.engine.types import AccessType, Capability
from cryptvol.errors import (
    Aborted,
    AlreadyExists,
    CryptvolError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    quoted,
)
from cryptvol.keys.manager import KeyManager
from cryptvol.luks.cryptsetup import mapping_name
from cryptvol.luks.policy import LuksPlan, plan
from cryptvol.luks.probe import HostProbe
from cryptvol.pools.base import Pool
from cryptvol.pools.registry import PoolRegistry
from cryptvol.state.records import ContentSource, LuksRecord, VolumeRecord
from cryptvol.state.repository import SnapshotRepository, VolumeRepository
from cryptvol.system import failpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    required_bytes: int
    limit_bytes: int
    capabilities: Sequence[Capability]
    parameters: Mapping[str, str]
    secrets: Mapping[str, str] = field(default_factory=dict)
    requisite_topologies: Sequence[Mapping[str, str]] = ()
    preferred_topologies: Sequence[Mapping[str, str]] = ()
    # A snapshot or volume to copy; None for an empty volume.
    source: ContentSource | None = None


@dataclass(frozen=True)
class VolumeInfo:
    volume_id: str
    capacity_bytes: int
    volume_context: dict[str, str]
    topology: dict[str, str]
    source: ContentSource | None = None
    # The volume's condition as the controller knows it: its record, backing volume and key.
    abnormal: bool = False
    condition: str = ""


class ControllerEngine:
    def __init__(
        self,
        volumes: VolumeRepository,
        snapshots: SnapshotRepository,
        keys: KeyManager,
        pools: PoolRegistry,
        node_id: str,
        locks: OperationLocks,
        host: Callable[[], HostProbe] | None = None,
        direct: DirectTriggers | None = None,
        ledger: CapacityLedger | None = None,
    ) -> None:
        self.host = host
        self.direct = direct or DirectTriggers(None)
        self.volumes = volumes
        self.snapshots = snapshots
        self.keys = keys
        self.pools = pools
        self.node_id = node_id
        self.locks = locks
        self.ledger = ledger or CapacityLedger(volumes, node_id)

    # --- CreateVolume -------------------------------------------------------------------
    def create_volume(self, req: CreateRequest) -> VolumeInfo:
        params = parse_parameters(req.parameters)
        check_capabilities(req.capabilities)
        if params.kata_direct:
            check_direct_access(req.capabilities, STORAGECLASS)
        fs_type = fs_type_for(req.capabilities, params)
        block_only = all(c.access_type is AccessType.BLOCK for c in req.capabilities)
        if req.source is None:
            capacity = capacity_for(req.required_bytes, req.limit_bytes,
                                    minimum_bytes(None if block_only else fs_type))
        self._check_topology(req.requisite_topologies)
        if params.key_source == "secret" and params.secret_key not in req.secrets:
            raise InvalidArgument(
                f"keySource 'secret' needs the passphrase under key {quoted(params.secret_key)} "
                "in the provisioner secret (csi.storage.k8s.io/provisioner-secret-name and "
                "-namespace in the StorageClass)"
            )
        # Planned against this host's cryptsetup before anything is written, so a volume
        # that cannot work here (pbkdfFallback false, no argon2) is refused now.
        luks_plan = plan(params.luks, "managed" if params.key_source == "managed" else
                         "passphrase", self.host() if self.host else None)
        volume_id = volume_id_for(req.name)
        with self.locks.hold(volume_id, "CreateVolume"):
            existing = self.volumes.get(volume_id)
            key_stored = False  # whether this call committed a new DEK with the record
            inserted: int | None = None  # the revision of the record this call inserted
            if existing is None:
                # Decided once, for a new volume: a retry finds the choice in the record.
                trigger = self.direct.at_create(params.kata_direct, req.parameters)
                if trigger is not None:
                    check_direct_access(req.capabilities, trigger)
                if req.source is None:
                    pool = self.pools.get(params.pool)
                    record = self._new_record(volume_id, req.name, capacity, params, fs_type,
                                              luks_plan, pool, trigger or "")
                else:
                    record, pool = self._new_copy(volume_id, req, params, luks_plan,
                                                  trigger or "")
                    self._check_room_to_copy(record, pool)
                # A new managed volume's DEK commits with its record: one fsync, not two.
                # When that cannot be (a rotation moved the key set), the record goes alone
                # and _finish_create makes the DEK, as after a crash. A copy's DEK is its
                # source's, copied in _finish_copy.
                fresh_key = record.key_source == "managed" and record.content_source is None
                compares, ops = self.keys.new_dek_write(volume_id) if fresh_key else ([], [])
                # Every volume is a promise of its whole size, a thin copy too: it shares
                # its source's blocks only until either is written.
                with self.ledger.promise(pool, record.backing_bytes,
                                         f"a {record.capacity_bytes}-byte volume with its "
                                         "LUKS2 header"):
                    inserted = self.volumes.insert(record, with_compares=compares,
                                                   with_ops=ops)
                    key_stored = inserted is not None and bool(ops)
                    if inserted is None and ops:
                        inserted = self.volumes.insert(record)
                if inserted is None:
                    existing = self.volumes.get(volume_id)
                    if existing is None:
                        raise AlreadyExists(
                            f"volume name {quoted(req.name)} is taken by another volume"
                        )
                else:
                    existing = record
                    if trigger is not None:
                        log.info("kata direct volume created",
                                 extra={"volume": volume_id, "trigger": trigger})
            self._check_same_request(existing, req, params)
            if existing.state == "deleting":
                raise AlreadyExists(
                    f"volume {quoted(req.name)} is being deleted; retry once DeleteVolume finished"
                )
            if existing.state == "creating":
                existing = self._finish_create(existing, key_stored, inserted)
            return self._info(existing)

    def _new_record(self, volume_id: str, name: str, capacity: int, params: VolumeParameters,
                    fs_type: str, luks_plan: LuksPlan, pool: Pool,
                    kata_direct: str) -> VolumeRecord:
        return VolumeRecord(
            id=volume_id,
            name=name,
            capacity_bytes=capacity,
            backing_bytes=capacity + LUKS2_HEADER_BYTES,
            parameters=params.raw,
            fs_type=fs_type,
            key_source=params.key_source,
            secret_key=params.secret_key,
            pool=pool.name,
            node_id=self.node_id,
            luks=LuksRecord.model_validate(luks_plan.to_record()),
            node_capacity_bytes=capacity,
            kata_direct=kata_direct,
        )

    def _new_copy(self, volume_id: str, req: CreateRequest, params: VolumeParameters,
                  luks_plan: LuksPlan, kata_direct: str) -> tuple[VolumeRecord, Pool]:
        """The record of a volume copied from a snapshot or volume, once every check that
        can refuse it has passed: nothing is written before."""
        assert req.source is not None
        origin = copies.resolve(req.source, self.volumes, self.snapshots, self.keys)
        source_pool = self.pools.of_volume(origin.source.id, origin.pool)
        pool = self.pools.get(params.pool) if params.pool else source_pool
        copies.check_same_pool(origin, pool, source_pool)
        live = origin.source.id if origin.source.kind == "volume" else None
        copies.check_can_copy(pool, pool.capabilities.clone, live)
        copies.check_compatible(origin, params.key_source, params.secret_key, params.raw,
                                asked_fs_type(req.capabilities, params))
        capacity = copy_capacity(req.required_bytes, req.limit_bytes, origin.size_bytes,
                                 origin.what)
        record = VolumeRecord(
            id=volume_id,
            name=req.name,
            capacity_bytes=capacity,
            backing_bytes=capacity + LUKS2_HEADER_BYTES,
            parameters=params.raw,
            fs_type=origin.fs_type,
            key_source=origin.key_source,
            secret_key=origin.secret_key,
            pool=pool.name,
            node_id=self.node_id,
            luks=copies.luks_of_copy(origin, luks_plan),
            # The mapping and filesystem are the source's size until the first stage.
            node_capacity_bytes=origin.size_bytes,
            content_source=origin.source,
            rekey=origin.key_source == "managed",
            reencrypt="pending" if params.clone_reencrypt else "",
            kata_direct=kata_direct,
        )
        return record, pool

    @staticmethod
    def _check_room_to_copy(record: VolumeRecord, pool: Pool) -> None:
        """A copy by bytes writes them now, so they must fit in what is free now, whatever
        may still be promised; a thin copy writes nothing yet."""
        if pool.capabilities.clone != "copy":
            return
        free = pool.provisioner.space().free_bytes
        if record.backing_bytes > free:
            raise ResourceExhausted(
                f"pool {pool.name} has {free} bytes free; copying into a "
                f"{record.capacity_bytes}-byte volume needs {record.backing_bytes} with its "
                "LUKS2 header"
            )

    def _finish_create(self, record: VolumeRecord, key_stored: bool = False,
                       revision: int | None = None) -> VolumeRecord:
        """Make what the record promises, then mark it ready. `key_stored`: this call
        committed the volume's new DEK with its record, so there is no key to make;
        `revision`: this call inserted the record, at that revision."""
        failpoints.reached("create:after-record")
        provisioner = self._pool(record).provisioner
        if record.content_source is not None:
            self._finish_copy(record, record.content_source)
        else:
            provisioner.create(record.id, record.backing_bytes)
            failpoints.reached("create:after-backing")
            if record.key_source == "managed" and not key_stored:
                self.keys.create_dek(record.id)

        def mark_ready(r: VolumeRecord) -> VolumeRecord:
            return r.model_copy(update={"state": "ready"})

        return self.volumes.update(record.id, mark_ready, current=None if revision is None
                                   else (record, revision))

    def _finish_copy(self, record: VolumeRecord, source: ContentSource) -> None:
        """The copy's key first (its own copy of its source's DEK, so it opens whatever
        happens to the source's), then its bytes. A source deleted while a crash left this
        unfinished takes the half-made copy with it."""
        try:
            origin = copies.resolve(source, self.volumes, self.snapshots, self.keys)
        except NotFound:
            self.keys.delete_dek(record.id)
            self._pool(record).provisioner.delete(record.id)
            self.volumes.remove(record)
            raise
        if record.key_source == "managed":
            self.keys.copy_dek(origin.key_id, record.id)
        failpoints.reached("copy:after-key")
        self._pool(record).provisioner.copy(origin.bytes_from, record.id, record.backing_bytes)
        failpoints.reached("copy:after-backing")

    @staticmethod
    def _check_same_request(
        record: VolumeRecord, req: CreateRequest, params: VolumeParameters
    ) -> None:
        if record.name != req.name:
            raise Internal(
                f"volume id collision between {quoted(record.name)} and {quoted(req.name)}"
            )
        if record.content_source != req.source:
            raise AlreadyExists(
                f"volume {quoted(req.name)} exists with another content source; use a new name"
            )
        if record.parameters != params.raw:
            raise AlreadyExists(
                f"volume {quoted(req.name)} exists with other parameters; use a new name"
            )
        fits_required = record.capacity_bytes >= req.required_bytes
        fits_limit = req.limit_bytes == 0 or record.capacity_bytes <= req.limit_bytes
        if not (fits_required and fits_limit):
            raise AlreadyExists(
                f"volume {quoted(req.name)} exists with {record.capacity_bytes} bytes, outside the "
                "capacity range asked; use a new name"
            )

    def _check_topology(self, requisite: Sequence[Mapping[str, str]]) -> None:
        if not requisite:
            return
        for topology in requisite:
            if topology.get(TOPOLOGY_KEY, self.node_id) == self.node_id:
                return
        raise ResourceExhausted(
            f"this driver serves node {quoted(self.node_id)} only; none of the requisite "
            "topologies names it"
        )

    def _info(self, record: VolumeRecord, condition: bool = False) -> VolumeInfo:
        fmt = record.luks.format
        context = {
            "fsType": record.fs_type,
            "keySource": record.key_source,
            "mapping": mapping_name(record.id),
            "pool": record.pool,
            "cipher": f"{fmt.get('cipher')} {fmt.get('key_size')}-bit",
            "pbkdf": str(fmt.get("pbkdf")),
            "luks": "; ".join(record.luks.reasons),
        }
        if record.kata_direct:
            context["kataDirect"] = record.kata_direct
        problem = self._condition(record) if condition else None
        fine = ("the volume has its backing volume and its key" if record.node_id ==
                self.node_id else f"the volume lives on node {record.node_id}, whose driver "
                "checks it")
        return VolumeInfo(
            volume_id=record.id,
            capacity_bytes=record.capacity_bytes,
            volume_context=context,
            topology={TOPOLOGY_KEY: record.node_id},
            source=record.content_source,
            abnormal=problem is not None,
            condition=problem or (fine if condition else ""),
        )

    def _condition(self, record: VolumeRecord) -> str | None:
        """What the controller knows to be wrong with a volume, or None. The node's
        NodeGetVolumeStats knows more (mapping, filesystem, device errors)."""
        if record.node_id != self.node_id:
            return None  # another node's pools: that node's controller knows
        try:
            pool = self._pool(record)
        except FailedPrecondition as exc:
            return str(exc)
        if pool.provisioner.size(record.id) is None:
            return (f"the backing volume of {record.id} is gone from pool {pool.name}; its "
                    "data is lost unless the pool is restored")
        if record.key_source == "managed" and not self.keys.has_dek(record.id):
            return (f"the data key of {record.id} is gone from the key store; the volume "
                    "cannot be unlocked unless the state store is restored from a backup")
        return None

    # --- DeleteVolume -------------------------------------------------------------------
    def delete_volume(self, volume_id: str) -> None:
        if not is_volume_id(volume_id):
            return  # never ours, so already absent: DeleteVolume succeeds
        with self.locks.hold(volume_id, "DeleteVolume"):
            found = self.volumes.get_with_revision(volume_id)
            if found is None:
                # The record is written before anything else and removed last: without it
                # nothing of this volume is left but, after a crash between the commit that
                # removed it and the forgetting after it, its key's bytes in the store's
                # history. Forget them again: an OK means they are gone.
                self.keys.forget_shredded()
                return
            record = found[0]
            provisioner = self._pool(record).provisioner
            if provisioner.in_use(volume_id):
                raise FailedPrecondition(
                    f"volume {volume_id} is still staged on node {record.node_id}; "
                    "unstage it first"
                )
            # From here the volume is gone from the API; its snapshots and the copies made
            # of it keep their own keys and (the pool sees to it) their bytes. The key is
            # shredded in the commit that marks the volume deleting: from then on the
            # backing data cannot be read, whatever a crash leaves behind. The store forgets
            # the key's history in the round that removes the record, before the reply.
            self.volumes.update(volume_id, lambda r: r.model_copy(update={"state":
                                                                          "deleting"}),
                                with_ops=self.keys.shred_ops(volume_id), current=found)
            failpoints.reached("delete:after-key")
            try:
                provisioner.delete(volume_id)
            except BaseException:
                with contextlib.suppress(CryptvolError):  # the error to report is the first
                    self.keys.forget_shredded()  # the key is gone: its bytes go now
                raise
            failpoints.reached("delete:after-backing")
            # A volume's id derives from its name, so its name maps to no other volume.
            self.volumes.remove(record, forget_history=True,
                                owns_name=volume_id_for(record.name) == record.id)

    # --- ValidateVolumeCapabilities, ListVolumes, GetCapacity ----------------------------
    def validate_capabilities(
        self, volume_id: str, capabilities: Sequence[Capability], parameters: Mapping[str, str]
    ) -> str | None:
        """None when the volume supports every capability; otherwise why not."""
        record = self.volumes.require(volume_id)
        if parameters and parse_parameters(parameters).raw != record.parameters:
            return "the parameters differ from those the volume was created with"
        try:
            check_capabilities(capabilities)
            trigger = recorded(record.kata_direct)
            if trigger is not None:
                check_direct_access(capabilities, trigger)
        except InvalidArgument as exc:
            return str(exc)
        return None

    def list_volumes(self, max_entries: int, starting_token: str) -> tuple[list[VolumeInfo],
                                                                           str]:
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        if starting_token and not is_volume_id(starting_token):
            raise Aborted(
                f"starting_token {quoted(starting_token)} is not one this driver issued"
            )
        page, next_token = self.volumes.page_where(starting_token, max_entries,
                                                   lambda r: r.state == "ready")
        return [self._info(r, condition=True) for r in page], next_token

    def capacity(self, capabilities: Sequence[Capability], parameters: Mapping[str, str],
                 topology: Mapping[str, str] | None) -> int:
        name = parse_parameters(parameters).pool if parameters else ""
        if name and name not in self.pools.names:
            # Pools are node-local and nodes may differ: a class whose pool this node lacks
            # has no room here, which the scheduler must learn rather than an error.
            return 0
        pool = self.pools.get(name)
        if capabilities:
            try:
                check_capabilities(capabilities)
            except InvalidArgument:
                return 0
        if topology and topology.get(TOPOLOGY_KEY, self.node_id) != self.node_id:
            return 0
        # What can still be promised (see CapacityLedger), as a volume's usable size.
        return max(0, self.ledger.available(pool) - LUKS2_HEADER_BYTES)

    def _pool(self, record: VolumeRecord) -> Pool:
        return self.pools.of_volume(record.id, record.pool)

    def get_volume(self, volume_id: str) -> VolumeInfo:
        record = self.require(volume_id)
        if record.state != "ready":
            raise NotFound(f"volume {volume_id} is still being {record.state[:-3]}ed")
        return self._info(record, condition=True)

    def require(self, volume_id: str) -> VolumeRecord:
        if not is_volume_id(volume_id):
            raise NotFound(f"volume {quoted(volume_id)} does not exist")
        return self.volumes.require(volume_id)
