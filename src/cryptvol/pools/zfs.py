"""A ZFS pool: one sparse zvol per volume under a configured dataset (`NAME=zfs:POOL/DATASET`).

Layout under the dataset DS:

    DS/<volume id>                      a volume (zvol, volmode=dev, sparse)
    DS/<volume id>@<snapshot id>        a snapshot the engine took
    DS/<volume id>@copy:<new id>        the point a copy of a live volume was cloned from
    DS/<volume id>:recv                 a raw receive in progress (renamed when complete)
    DS/<volume id>:deleted:<guid>       a deleted volume whose snapshots still live

Volume and snapshot ids never contain ':', so the driver's own names never collide with
them.

Copies: inside one encryption root a copy is a `zfs clone` of a snapshot (constant time,
blocks shared). A clone and its origin share one dataset key, so a copy whose source sits
under another encryption root is a raw send (`zfs send -w SNAP | zfs recv NEW`) into a new
name, then re-keyed to inherit the pool's root. The driver never runs `zfs recv -F`: onto
an encrypted dataset it fails ("zfs receive -F cannot be used to destroy an encrypted
filesystem ..."), and it would destroy what the target held.

Deleting a volume whose snapshots (or clones of them) still live: the volume is renamed to a
hidden `:deleted:` name, so its id is free at once and its snapshots still restore; a
snapshot whose clones live is destroyed with `zfs destroy -d` (deferred: ZFS frees it with
its last clone). Whenever a clone or a snapshot goes, the driver walks up the origin chain
and destroys each hidden volume that no snapshot holds any more. Promotion was not chosen: it
moves snapshots to the clone and renames them, so a snapshot's name would depend on which of
its relatives were deleted first.

The node side needs no udev: see `zvol_devices`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition, NotFound, ResourceExhausted
from cryptvol.pools.base import (
    CopySource,
    Pool,
    PoolCapabilities,
    PoolEncryption,
    PoolSpace,
    WriteState,
)
from cryptvol.pools.zvol_devices import ZvolDevices, held
from cryptvol.system import CommandError, run, run_pipeline
from cryptvol.system.devices import device_size

KIND = "zfs"
# Clones depend on their origin snapshot: a deleted volume whose snapshots' clones live is
# kept hidden until the last of them goes (see delete), as the protocol asks.
CAPABILITIES = PoolCapabilities(online_expand=True, snapshot="thin", clone="thin")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A ZFS dataset name: components of letters, digits and _ - . : separated by '/'.
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:-]+)*$")
_DELETED = ":deleted:"
_RECEIVING = ":recv"
_COPY_POINT = "copy:"
_SEND_TIMEOUT = 3600.0
_ZFS_TIMEOUT = 120.0


# The store identity this pool was last used with (see Provisioner.store_marker), and the
# `logicalreferenced` of a zvol as created: what it reads while nothing was ever written.
STORE_PROPERTY = "io.cryptvol:store-id"
BLANK_PROPERTY = "io.cryptvol:blank-refer"
_STORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# What every listing reads: enough for each operation to need a single `zfs list` before it
# acts (a `zfs` command costs a process start and a trip through libzfs: tenths of a
# second on a small node, more under emulation).
_PROPS = ("name", "type", "volsize", "origin", "guid", "defer_destroy", "encryption",
          "encryptionroot", "keystatus", "keylocation", "available", "used",
          "logicalreferenced", BLANK_PROPERTY, STORE_PROPERTY)


@dataclass(frozen=True)
class DatasetState:
    """What the pool probe reads of the configured dataset."""

    encryption: str  # "off", or the cipher (aes-256-gcm, ...)
    encryption_root: str  # "" when not encrypted
    key_loaded: bool
    available: int
    used: int


Entry = dict[str, str]


class ZfsDataset:
    """The configured dataset, the names under it, and the `zfs` commands on them."""

    def __init__(self, pool_name: str, dataset: str) -> None:
        self.pool_name = pool_name
        self.name = dataset

    # --- names ------------------------------------------------------------------------------
    def volume(self, volume_id: str) -> str:
        if not _ID.match(volume_id):
            raise NotFound(f"volume id {volume_id!r} is not one cryptvol made")
        return f"{self.name}/{volume_id}"

    def snapshot(self, volume_id: str, snapshot_id: str) -> str:
        if not _ID.match(snapshot_id):
            raise NotFound(f"snapshot id {snapshot_id!r} is not one cryptvol made")
        return f"{self.volume(volume_id)}@{snapshot_id}"

    @property
    def zpool(self) -> str:
        return self.name.split("/", 1)[0]

    @staticmethod
    def is_hidden(dataset: str) -> bool:
        return _DELETED in dataset.rsplit("/", 1)[-1]

    # --- listing ----------------------------------------------------------------------------
    def list(self, *datasets: str, snapshots: bool = False) -> dict[str, Entry]:
        """The datasets that exist among `datasets` (with their snapshots, when asked), by
        name, in one `zfs list`; a dataset that does not exist is left out."""
        types = "volume,filesystem,snapshot" if snapshots else "volume,filesystem"
        argv = ["zfs", "list", "-H", "-p", "-o", ",".join(_PROPS), "-t", types,
                *(["-d", "1"] if snapshots else []), *datasets]
        try:
            result = run(argv, timeout=_ZFS_TIMEOUT, check=False)
        except CommandError as exc:
            raise _explained(exc) from None
        if result.returncode != 0:
            unexplained = [line for line in result.stderr.splitlines()
                           if line.strip() and "does not exist" not in line]
            if unexplained:
                raise _explained(CommandError(argv, result.returncode, result.stderr))
        found = {}
        for line in result.stdout.splitlines():
            values = line.split("\t")
            if len(values) == len(_PROPS):
                found[values[0]] = dict(zip(_PROPS, values, strict=True))
        return found

    def entry(self, dataset: str) -> Entry | None:
        return self.list(dataset).get(dataset)

    def state(self, entry: Entry | None) -> DatasetState:
        """The probe: the configured dataset's encryption and space, from its listing; a
        dataset that is missing cannot serve."""
        if entry is None:
            raise self.missing()
        encryption = entry["encryption"]
        return DatasetState(
            encryption=encryption,
            encryption_root="" if encryption == "off" else entry["encryptionroot"],
            key_loaded=entry["keystatus"] != "unavailable",
            available=int(entry["available"]),
            used=int(entry["used"]),
        )

    def missing(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"pool {self.pool_name!r}: ZFS dataset {self.name} does not exist; create it "
            f"(zfs create {self.name}) under the encryption root it should belong to"
        )

    def probe(self) -> DatasetState:
        return self.state(self.entry(self.name))

    def keyed(self, listing: dict[str, Entry]) -> DatasetState:
        """The probe from a listing that included the configured dataset; a dataset whose
        key is not loaded cannot make or open volumes."""
        state = self.state(listing.get(self.name))
        if not state.key_loaded:
            raise FailedPrecondition(
                f"pool {self.pool_name!r}: the encryption key of {state.encryption_root} is "
                f"not loaded, so its volumes cannot be made or opened; run `zfs load-key "
                f"{state.encryption_root}` on this node"
            )
        return state

    # --- commands ---------------------------------------------------------------------------
    def zfs(self, *args: str, timeout: float = _ZFS_TIMEOUT) -> str:
        try:
            return run(["zfs", *args], timeout=timeout).stdout
        except CommandError as exc:
            raise _explained(exc) from None

    def zfs_new(self, *args: str) -> bool:
        """Run a `zfs` command that makes a dataset; False when the name was taken (by a
        concurrent retry of the same operation)."""
        try:
            run(["zfs", *args], timeout=_ZFS_TIMEOUT)
        except CommandError as exc:
            if "already exists" in exc.stderr:
                return False
            raise _explained(exc) from None
        return True

    def find_snapshot(self, volume_id: str, snapshot_id: str) -> Entry | None:
        """The snapshot, on its volume or on the volume's hidden remains."""
        wanted = self.snapshot(volume_id, snapshot_id)
        found = self.list(self.volume(volume_id), snapshots=True).get(wanted)
        if found is not None:
            return found
        hidden = f"{self.volume(volume_id)}{_DELETED}"
        out = self.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "2", self.name)
        for name in out.split():
            dataset, _, snap = name.partition("@")
            if snap == snapshot_id and dataset.startswith(hidden):
                return self.list(dataset, snapshots=True).get(name)
        return None

    def destroy_unreferenced(self, dataset: str | None) -> None:
        """Destroy hidden (deleted) volumes up an origin chain while no snapshot holds them.

        Called after a clone or a snapshot went away. ZFS itself refuses to destroy a
        dataset that gained a snapshot or clone meanwhile, so a concurrent copy is safe:
        the walk just stops there."""
        while dataset and self.is_hidden(dataset):
            listing = self.list(dataset, snapshots=True)
            if dataset not in listing or len(listing) > 1:
                return
            try:
                run(["zfs", "destroy", dataset], timeout=_ZFS_TIMEOUT)
            except CommandError:
                return
            dataset = _origin_dataset(listing[dataset])


def _origin_dataset(entry: Entry) -> str | None:
    origin = entry["origin"]
    return origin.partition("@")[0] if origin not in ("", "-") else None


def _explained(exc: CommandError) -> Exception:
    """A zfs failure whose cause the operator can fix, said as such."""
    if exc.returncode == 127:
        return FailedPrecondition("zfs is not installed on this node (Debian: zfsutils-linux)")
    if "modules are not loaded" in exc.stderr or "/dev/zfs" in exc.stderr:
        return FailedPrecondition(
            "the ZFS kernel module is not loaded on this node; run `modprobe zfs`"
        )
    if "key" in exc.stderr and "not loaded" in exc.stderr:
        return FailedPrecondition(f"{exc.stderr}; run `zfs load-key` for its encryption root")
    return exc


class ZfsProvisioner:
    def __init__(self, dataset: ZfsDataset, devices: ZvolDevices) -> None:
        self.ds = dataset
        self.devices = devices

    def create(self, volume_id: str, size_bytes: int) -> None:
        name = self.ds.volume(volume_id)
        listing = self.ds.list(self.ds.name, name)
        state = self.ds.keyed(listing)
        entry = listing.get(name)
        if entry is None:
            if size_bytes > state.available:
                raise ResourceExhausted(
                    f"ZFS dataset {self.ds.name} has {state.available} bytes available, "
                    f"{size_bytes} asked"
                )
            self.ds.zfs_new("create", "-s", "-V", str(size_bytes), "-o", "volmode=dev", name)
            entry = self.ds.entry(name)
            if entry is None:
                raise NotFound(f"zvol {name} vanished as it was made")
        if int(entry["volsize"]) != size_bytes:
            raise FailedPrecondition(
                f"zvol {name} exists with {entry['volsize']} bytes, not the {size_bytes} asked"
            )
        if entry[BLANK_PROPERTY] == "-" and entry["origin"] == "-":
            # Nothing wrote to it yet: create() has not returned, so no stage has begun.
            self.ds.zfs("set", f"{BLANK_PROPERTY}={entry['logicalreferenced']}", name)

    def delete(self, volume_id: str) -> None:
        name = self.ds.volume(volume_id)
        listing = self.ds.list(name, name + _RECEIVING, snapshots=True)
        if name + _RECEIVING in listing:
            self.ds.zfs("destroy", "-r", name + _RECEIVING)
        entry = listing.get(name)
        if entry is None:
            return
        if any(n.startswith(name + "@") for n in listing):
            # Its snapshots (or clones of them) still live: free the id now, the storage
            # when the last of them goes.
            hidden = f"{name}{_DELETED}{entry['guid']}"
            self.devices.forget(name)
            self.ds.zfs("rename", name, hidden)
            self.ds.zfs("set", "volmode=none", hidden)
            return
        self.ds.zfs("destroy", name)
        self.ds.destroy_unreferenced(_origin_dataset(entry))

    def size(self, volume_id: str) -> int | None:
        entry = self.ds.entry(self.ds.volume(volume_id))
        return None if entry is None else int(entry["volsize"])

    def expand(self, volume_id: str, size_bytes: int) -> int:
        name = self.ds.volume(volume_id)
        listing = self.ds.list(self.ds.name, name)
        self.ds.keyed(listing)
        if name not in listing:
            raise NotFound(f"volume {volume_id} has no zvol in {self.ds.name}")
        current = int(listing[name]["volsize"])
        if size_bytes <= current:
            return current
        self.ds.zfs("set", f"volsize={size_bytes}", name)
        return size_bytes

    def in_use(self, volume_id: str) -> bool:
        device = self.devices.find(self.ds.volume(volume_id))
        return device is not None and held(device)

    def free_bytes(self) -> int:
        return self.space().free_bytes

    def space(self) -> PoolSpace:
        state = self.ds.keyed(self.ds.list(self.ds.name))
        return PoolSpace(total_bytes=state.used + state.available, free_bytes=state.available)

    def volume_ids(self) -> list[str]:
        """Every zvol under the dataset named as cryptvol names volumes (hidden remains of
        deleted ones and partial receives have ':' in their names, so they are left out)."""
        out = self.ds.zfs("list", "-H", "-o", "name", "-t", "volume", "-d", "1", self.ds.name)
        prefix = self.ds.name + "/"
        return sorted(n[len(prefix):] for n in out.split()
                      if n.startswith(prefix) and _ID.match(n[len(prefix):]))

    def store_marker(self) -> str | None:
        """The store identity, kept as a user property of the configured dataset."""
        entry = self.ds.entry(self.ds.name)
        if entry is None:
            raise self.ds.missing()
        return None if entry[STORE_PROPERTY] in ("", "-") else entry[STORE_PROPERTY]

    def mark_store(self, store_id: str) -> None:
        if not _STORE_ID.match(store_id):
            raise ValueError(f"store identity {store_id!r} cannot be a ZFS property value")
        if self.store_marker() != store_id:
            self.ds.zfs("set", f"{STORE_PROPERTY}={store_id}", self.ds.name)

    def snapshot(self, volume_id: str, snapshot_id: str) -> int:
        name = self.ds.volume(volume_id)
        snap = self.ds.snapshot(volume_id, snapshot_id)
        listing = self.ds.list(name, snapshots=True)
        if snap not in listing:
            if name not in listing:
                raise NotFound(f"volume {volume_id} has no zvol in {self.ds.name}")
            if self.ds.zfs_new("snapshot", snap):
                return int(listing[name]["volsize"])
            listing = self.ds.list(name, snapshots=True)
            if snap not in listing:
                raise NotFound(f"snapshot {snapshot_id} of volume {volume_id} vanished")
        return int(listing[snap]["volsize"])

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        found = self.ds.find_snapshot(volume_id, snapshot_id)
        if found is None:
            return
        # -d: with clones alive, ZFS keeps it until the last one goes.
        self.ds.zfs("destroy", "-d", found["name"])
        self.ds.destroy_unreferenced(found["name"].partition("@")[0])

    def copy(self, source: CopySource, volume_id: str, size_bytes: int) -> None:
        target = self.ds.volume(volume_id)
        listing = self.ds.list(self.ds.name, target)
        if target not in listing:
            state = self.ds.keyed(listing)
            origin = self._copy_point(source, volume_id)
            if self._same_key(origin, state):
                self.ds.zfs_new("clone", "-o", "volmode=dev", origin["name"], target)
            else:
                self._receive(origin, target, state)
            self._release_copy_point(source, volume_id, origin)
            entry = self.ds.entry(target)
            if entry is None:
                raise NotFound(f"zvol {target} vanished as it was made")
        else:
            entry = listing[target]
            if not source.snapshot_id:
                # A retry after a crash between the clone and the release of its point.
                volume = self.ds.volume(source.volume_id)
                point = self.ds.list(volume, snapshots=True).get(
                    f"{volume}@{_COPY_POINT}{volume_id}")
                if point is not None:
                    self._release_copy_point(source, volume_id, point)
        if int(entry["volsize"]) < size_bytes:
            self.ds.zfs("set", f"volsize={size_bytes}", target)

    # --- copies -----------------------------------------------------------------------------
    def _copy_point(self, source: CopySource, volume_id: str) -> Entry:
        """The snapshot a copy is made from: the one named, or one of the volume now."""
        if source.snapshot_id:
            found = self.ds.find_snapshot(source.volume_id, source.snapshot_id)
            if found is None:
                raise NotFound(
                    f"snapshot {source.snapshot_id} of volume {source.volume_id} does not "
                    f"exist in {self.ds.name}"
                )
            return found
        volume = self.ds.volume(source.volume_id)
        snap = f"{volume}@{_COPY_POINT}{volume_id}"
        listing = self.ds.list(volume, snapshots=True)
        if volume not in listing:
            raise NotFound(f"volume {source.volume_id} has no zvol in {self.ds.name}")
        if snap not in listing:
            self.ds.zfs_new("snapshot", snap)
            listing = self.ds.list(volume, snapshots=True)
        return listing[snap]

    def _release_copy_point(self, source: CopySource, volume_id: str, origin: Entry) -> None:
        """Let the copy point of a live volume go with its clone (deferred destroy); a
        received copy does not depend on it, so it goes at once."""
        if not source.snapshot_id and origin["defer_destroy"] != "on":
            self.ds.zfs("destroy", "-d", origin["name"])

    def _same_key(self, origin: Entry, state: DatasetState) -> bool:
        """Whether a clone of `origin` may live in the pool's dataset: same zpool, and the
        same encryption root (a clone keeps its origin's key)."""
        if origin["name"].split("/", 1)[0] != self.ds.zpool:
            return False
        root = "" if origin["encryption"] == "off" else origin["encryptionroot"]
        return root == state.encryption_root

    def _receive(self, origin: Entry, target: str, state: DatasetState) -> None:
        """Copy across encryption roots: a raw send into a new name, re-keyed afterwards.

        Received under a temporary name and renamed last, so the target name exists only
        once the copy is whole; a leftover of an interrupted attempt is destroyed first."""
        key_location = ""
        if origin["encryption"] != "off":
            root = origin["encryptionroot"]
            root_entry = self.ds.entry(root)
            key_location = root_entry["keylocation"] if root_entry else "none"
            if not key_location.startswith(("file://", "https://", "http://")):
                raise FailedPrecondition(
                    f"{origin['name']} is encrypted under {root}, whose key is entered by "
                    f"hand (keylocation={key_location}); a copy into {self.ds.name} needs "
                    "that key to be readable by the driver (keylocation=file://...)"
                )
        partial = target + _RECEIVING
        if self.ds.entry(partial) is not None:
            self.ds.zfs("destroy", "-r", partial)
        try:
            run_pipeline(["zfs", "send", "-w", origin["name"]],
                         ["zfs", "recv", "-o", "volmode=dev", partial], timeout=_SEND_TIMEOUT)
        except CommandError as exc:
            raise _explained(exc) from None
        if key_location:
            self.ds.zfs("load-key", "-L", key_location, partial)
            if state.encryption_root:
                # Join the pool's encryption root, so later copies are clones again.
                self.ds.zfs("change-key", "-i", partial)
            else:
                self.ds.zfs("set", f"keylocation={key_location}", partial)
        # The stream's snapshot came along; the copy needs none.
        self.ds.zfs("destroy", f"{partial}@{origin['name'].partition('@')[2]}")
        self.devices.forget(partial)
        self.ds.zfs("rename", partial, target)


class ZfsAttacher:
    """A zvol is a block device for as long as it exists: attaching waits for its device
    node, and detaching has nothing to undo."""

    def __init__(self, dataset: ZfsDataset, devices: ZvolDevices) -> None:
        self.ds = dataset
        self.devices = devices

    def attach(self, volume_id: str) -> str:
        name = self.ds.volume(volume_id)
        existing = self.devices.find(name)
        if existing:
            return existing
        listing = self.ds.list(self.ds.name, name)
        self.ds.keyed(listing)
        if name not in listing:
            raise NotFound(f"volume {volume_id} has no zvol in {self.ds.name}")
        return self.devices.wait(name)

    def detach(self, volume_id: str) -> None:
        self.ds.volume(volume_id)  # refuses an id that is not one

    def attached_device(self, volume_id: str) -> str | None:
        return self.devices.find(self.ds.volume(volume_id))

    def refresh(self, volume_id: str) -> int:
        device = self.attached_device(volume_id)
        if device is None:
            raise NotFound(f"volume {volume_id} is not attached on this node")
        return device_size(device)

    def written(self, volume_id: str) -> WriteState:
        """A zvol made by `create` records what it references while blank; after a txg
        sync (space is counted when a txg syncs, and a write may be only in the intent
        log yet) referencing exactly that means no block was ever written, or every one
        written was discarded again: it reads as zeros. Copies hold their source's data."""
        name = self.ds.volume(volume_id)
        run(["zpool", "sync", self.ds.zpool], timeout=_ZFS_TIMEOUT)
        entry = self.ds.entry(name)
        if entry is None:
            raise NotFound(f"volume {volume_id} has no zvol in {self.ds.name}")
        if entry["origin"] != "-":
            return WriteState.WRITTEN
        blank = entry[BLANK_PROPERTY]
        if blank == "-":
            return WriteState.UNKNOWN  # received, or made before the driver recorded it
        return WriteState.NEVER if entry["logicalreferenced"] == blank else WriteState.WRITTEN


def encryption_of(dataset: ZfsDataset) -> PoolEncryption:
    state = dataset.probe()
    return PoolEncryption(cipher=state.encryption, root=state.encryption_root,
                          key_loaded=state.key_loaded)


def open_pool(name: str, location: str) -> Pool:
    """A ZFS pool on the dataset `location` (POOL/DATASET). Nothing is checked against ZFS
    here: a pool whose module, dataset or key is missing refuses each operation, saying
    what to do, and the driver's other pools keep working."""
    if not _DATASET.match(location) or len(location) > 200:
        raise ValueError(
            f"a zfs pool needs a dataset name like tank/cryptvol, not {location!r}"
        )
    dataset = ZfsDataset(name, location)
    devices = ZvolDevices()
    return Pool(name=name, kind=KIND, location=location, capabilities=CAPABILITIES,
                provisioner=ZfsProvisioner(dataset, devices),
                node=ZfsAttacher(dataset, devices),
                encryption=lambda: encryption_of(dataset))
