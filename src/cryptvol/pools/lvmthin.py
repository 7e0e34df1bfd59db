"""A pool of thin volumes in an LVM thin pool (`NAME=lvmthin:VG/THINPOOL`).

Each volume is a thin LV named by its id, each snapshot a read-only thin snapshot named by
its id, each copy a writable thin snapshot of a snapshot or volume: all copy-on-write in
the thin pool, so snapshots and clones are constant-time, and every one of them is an
independent LV (removing a volume leaves its snapshots and copies whole).

Volumes are writable LVs and snapshots read-only ones: that is how the pool tells them apart
(`volume_ids`). The store identity the pool was last used with is a tag on the thin pool
LV itself (`cryptvol-store:<id>`), kept in LVM's metadata like the LVs it vouches for.

Volumes are created inactive and activated only by the node side's `attach`, so a volume is
active exactly while it is attached. Every LV carries LVM's activation-skip flag (thin
snapshots have it anyway), so a host's boot-time autoactivation leaves them alone; `attach`
overrides it (`--ignoreactivationskip`, LVM's `-K`). Every LV cryptvol makes is tagged
`cryptvol`.

Nothing here depends on udev being absent or present: LVM's own configuration decides how
device nodes appear (the test VM gives it a udev-less lvm.conf, see DESIGN.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition, NotFound
from cryptvol.pools.base import CopySource, Pool, PoolCapabilities, PoolSpace, WriteState
from cryptvol.system import CommandError, run
from cryptvol.system.devices import device_size

KIND = "lvmthin"
CAPABILITIES = PoolCapabilities(online_expand=True, snapshot="thin", clone="thin")
TAG = "cryptvol"
# The thin pool LV's tag naming the state store it was last used with.
STORE_TAG = "cryptvol-store:"
# What an LVM tag may hold after STORE_TAG (LVM's tag characters, bounded).
_STORE_ID = re.compile(r"^[A-Za-z0-9_+.-]{1,100}$")
# LVM's own rule for VG and LV names, without its reserved prefixes.
_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
# LVM writes "File descriptor N leaked" warnings to stderr otherwise; harmless, but noise
# in every error message.
_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
_TIMEOUT = 300.0


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    size_bytes: int
    active: bool
    attr: str


class ThinPool:
    """The volume group and thin pool a pool's LVs live in, and how to ask LVM about them:
    what both sides of the pool share."""

    def __init__(self, vg: str, thin_pool: str) -> None:
        self.vg = vg
        self.thin_pool = thin_pool

    def path(self, lv: str) -> str:
        return f"{self.vg}/{_checked(lv)}"

    def device(self, lv: str) -> str:
        return f"/dev/{self.vg}/{_checked(lv)}"

    def lvm(self, *args: str) -> str:
        return run(["lvm", *args], env=_ENV, timeout=_TIMEOUT).stdout

    def find(self, lv: str) -> LogicalVolume | None:
        """The LV called `lv` in this volume group, or None."""
        return self.find_all(lv).get(lv)

    def find_all(self, *lvs: str) -> dict[str, LogicalVolume]:
        """Those of the LVs named that exist, by name: one `lvs` for all of them."""
        rows = self.report("lv_name,lv_size,lv_active,lv_attr", *lvs)
        return {name: LogicalVolume(name, int(size), active == "active", attr)
                for name, size, active, attr in rows if name in lvs}

    def report(self, fields: str, *lvs: str) -> list[list[str]]:
        """`fields` (comma-separated) of each LV named, or of every LV in the volume group
        when none is named: one row per LV."""
        select = ["--select", " || ".join(f"lv_name={_checked(lv)}" for lv in lvs)] \
            if lvs else []
        out = self.lvm("lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|",
                       "-o", fields, *select, self.vg)
        width = fields.count(",") + 1
        rows = [[f.strip() for f in line.split("|")] for line in out.splitlines()]
        return [row for row in rows if len(row) == width]

    def require(self, lv: str, what: str) -> LogicalVolume:
        found = self.find(lv)
        if found is None:
            raise NotFound(f"{what} has no logical volume in {self.vg}/{self.thin_pool}")
        return found


class LvmThinProvisioner:
    def __init__(self, pool: ThinPool) -> None:
        self.pool = pool

    def create(self, volume_id: str, size_bytes: int) -> None:
        existing = self.pool.find(volume_id)
        if existing is not None:
            # LVM rounds sizes up to whole extents: an earlier create of this size may have
            # made it a little larger, never smaller.
            if existing.size_bytes < size_bytes:
                raise FailedPrecondition(
                    f"logical volume {self.pool.path(volume_id)} exists with "
                    f"{existing.size_bytes} bytes, not the {size_bytes} asked"
                )
            return
        self.pool.lvm("lvcreate", "--yes", "--thin", "--virtualsize", f"{size_bytes}b",
                      "--name", volume_id, "--addtag", TAG, "--setactivationskip", "y",
                      "--activate", "n", f"{self.pool.vg}/{self.pool.thin_pool}")

    def delete(self, volume_id: str) -> None:
        self._remove(volume_id)

    def size(self, volume_id: str) -> int | None:
        found = self.pool.find(volume_id)
        return found.size_bytes if found else None

    def expand(self, volume_id: str, size_bytes: int) -> int:
        current = self.pool.require(volume_id, f"volume {volume_id}").size_bytes
        if size_bytes <= current:
            return current
        self.pool.lvm("lvextend", "--size", f"{size_bytes}b", self.pool.path(volume_id))
        return self.pool.require(volume_id, f"volume {volume_id}").size_bytes

    def in_use(self, volume_id: str) -> bool:
        found = self.pool.find(volume_id)
        return found is not None and found.active

    def free_bytes(self) -> int:
        return self.space().free_bytes

    def space(self) -> PoolSpace:
        out = self.pool.lvm("lvs", "--noheadings", "--nosuffix", "--units", "b",
                            "--separator", "|", "-o", "lv_size,data_percent",
                            f"{self.pool.vg}/{self.pool.thin_pool}")
        size, _, percent = out.strip().partition("|")
        total = int(size)
        used = int(total * float(percent or 0) / 100)
        return PoolSpace(total_bytes=total, free_bytes=max(0, total - used))

    def snapshot(self, volume_id: str, snapshot_id: str) -> int:
        # Every LVM command costs a process start and a metadata scan: one look for both.
        found = self.pool.find_all(volume_id, snapshot_id)
        if snapshot_id in found:
            return found[snapshot_id].size_bytes
        if volume_id not in found:
            raise NotFound(f"volume {volume_id} has no logical volume in "
                           f"{self.pool.vg}/{self.pool.thin_pool}")
        # Read-only: nothing may change a snapshot; copies of it are writable LVs.
        self.pool.lvm("lvcreate", "--yes", "--snapshot", "--name", snapshot_id,
                      "--addtag", TAG, "--permission", "r", self.pool.path(volume_id))
        return found[volume_id].size_bytes

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        self._remove(snapshot_id)

    def copy(self, source: CopySource, volume_id: str, size_bytes: int) -> None:
        origin = source.snapshot_id or source.volume_id
        found = self.pool.find_all(origin, volume_id)
        copied = found.get(volume_id)
        if copied is None:
            if origin not in found:
                what = f"snapshot {origin}" if source.snapshot_id else f"volume {origin}"
                raise NotFound(f"{what} has no logical volume in "
                               f"{self.pool.vg}/{self.pool.thin_pool}")
            self.pool.lvm("lvcreate", "--yes", "--snapshot", "--name", volume_id,
                          "--addtag", TAG, "--permission", "rw", "--setactivationskip", "y",
                          "--activate", "n", self.pool.path(origin))
            copied = found[origin]
        if copied.size_bytes < size_bytes:
            self.pool.lvm("lvextend", "--size", f"{size_bytes}b", self.pool.path(volume_id))

    def volume_ids(self) -> list[str]:
        """Every writable thin LV of this thin pool that cryptvol made (tagged); snapshots
        are read-only."""
        rows = self.pool.report("lv_name,pool_lv,lv_attr,lv_tags")
        return sorted(name for name, pool_lv, attr, tags in rows
                      if pool_lv == self.pool.thin_pool and attr[:2] == "Vw"
                      and TAG in tags.split(",") and _NAME.match(name))

    def store_marker(self) -> str | None:
        rows = self.pool.report("lv_tags", self.pool.thin_pool)
        if not rows:
            raise NotFound(f"thin pool {self.pool.vg}/{self.pool.thin_pool} is gone")
        return next((tag[len(STORE_TAG):] for tag in rows[0][0].split(",")
                     if tag.startswith(STORE_TAG)), None)

    def mark_store(self, store_id: str) -> None:
        if not _STORE_ID.match(store_id):
            raise ValueError(f"store identity {store_id!r} cannot be an LVM tag")
        found = self.store_marker()
        if found == store_id:
            return
        # One lvchange, one metadata commit: the old tag and the new never both, or neither.
        argv = ["lvchange", "--addtag", STORE_TAG + store_id]
        if found is not None:
            argv += ["--deltag", STORE_TAG + found]
        self.pool.lvm(*argv, self.pool.path(self.pool.thin_pool))

    def _remove(self, lv: str) -> None:
        if self.pool.find(lv) is not None:
            self.pool.lvm("lvremove", "--yes", self.pool.path(lv))


class LvmThinAttacher:
    def __init__(self, pool: ThinPool) -> None:
        self.pool = pool

    def attached_device(self, volume_id: str) -> str | None:
        # LVM (or udev for it) makes /dev/VG/LV exactly while the LV is active: a stat here
        # saves an `lvs` process start on every stage, publish and stats call.
        device = self.pool.device(volume_id)
        return device if os.path.exists(device) else None

    def attach(self, volume_id: str) -> str:
        existing = self.attached_device(volume_id)
        if existing:
            return existing
        self.pool.require(volume_id, f"volume {volume_id}")
        self.pool.lvm("lvchange", "--activate", "y", "--ignoreactivationskip",
                      self.pool.path(volume_id))
        device = self.attached_device(volume_id)
        if device is None:
            raise FailedPrecondition(
                f"LVM activated {self.pool.path(volume_id)} but made no "
                f"{self.pool.device(volume_id)}"
            )
        return device

    def detach(self, volume_id: str) -> None:
        found = self.pool.find(volume_id)
        if found is not None and found.active:
            self.pool.lvm("lvchange", "--activate", "n", self.pool.path(volume_id))

    def written(self, volume_id: str) -> WriteState:
        """A thin LV maps a block of the pool only once it is written: none mapped means
        never written. A copy (a thin snapshot) holds its source's data: WRITTEN. An active
        LV's mapped sectors come exact from its thin target; an inactive one has only LVM's
        rounded percentage, whose 0.00 may hide a few blocks."""
        rows = self.pool.report("lv_name,origin,data_percent", volume_id)
        if not rows:
            raise NotFound(f"volume {volume_id} has no logical volume in "
                           f"{self.pool.vg}/{self.pool.thin_pool}")
        _, origin, percent = rows[0]
        if origin:
            return WriteState.WRITTEN
        device = self.attached_device(volume_id)
        if device is None:
            return WriteState.WRITTEN if float(percent or 0) > 0 else WriteState.UNKNOWN
        return _thin_written(device)

    def refresh(self, volume_id: str) -> int:
        # lvextend reloads an active LV's table itself: the device already has its size.
        device = self.attached_device(volume_id)
        if device is None:
            raise NotFound(f"volume {volume_id} is not attached on this node")
        return device_size(device)


def _thin_written(device: str) -> WriteState:
    """From the thin target's status: `<start> <length> thin <mapped sectors> <highest>`."""
    rdev = os.stat(device).st_rdev
    out = run(["dmsetup", "status", "-j", str(os.major(rdev)), "-m", str(os.minor(rdev))],
              timeout=60).stdout.split()
    if len(out) >= 5 and out[2] == "thin" and out[3].isdigit():
        return WriteState.NEVER if int(out[3]) == 0 else WriteState.WRITTEN
    return WriteState.UNKNOWN  # a failed thin device ("Fail"), or not a thin target


def _checked(lv: str) -> str:
    if not _NAME.match(lv):
        raise NotFound(f"{lv!r} is not a logical volume name cryptvol made")
    return lv


def open_pool(name: str, location: str) -> Pool:
    """The thin pool `location` ("VG/THINPOOL"), which must exist and be a thin pool."""
    vg, slash, thin_pool = location.partition("/")
    if not slash or not _NAME.match(vg) or not _NAME.match(thin_pool):
        raise ValueError(f"an lvmthin pool is VG/THINPOOL, not {location!r}")
    pool = ThinPool(vg, thin_pool)
    try:
        found = pool.find(thin_pool)
    except CommandError as exc:
        raise ValueError(f"cannot read volume group {vg!r}: {exc}") from None
    if found is None or not found.attr.startswith("t"):
        raise ValueError(f"{location} is not an LVM thin pool (make one with "
                         f"`lvcreate --type thin-pool -L SIZE -n {thin_pool} {vg}`)")
    return Pool(name=name, kind=KIND, location=location, capabilities=CAPABILITIES,
                provisioner=LvmThinProvisioner(pool), node=LvmThinAttacher(pool))

