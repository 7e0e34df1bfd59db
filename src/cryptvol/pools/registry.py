"""Configured pools by name: parsed from `NAME=KIND:LOCATION`, opened once, looked up by the
engine for each volume's pool.

`--pool fast=lvmthin:vg0/thin --pool files=loop:/var/lib/cryptvol/pool` configures two;
a StorageClass picks one with its `pool` parameter, and the first is the default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptvol.errors import FailedPrecondition, InvalidArgument, quoted
from cryptvol.pools import loop, lvmthin
from cryptvol.pools.base import Pool

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Each kind opens its pool from the location text; a kind's module is imported only when a
# pool of that kind is configured.
def _open_zfs(name: str, location: str) -> Pool:
    from cryptvol.pools import zfs

    return zfs.open_pool(name, location)


_OPENERS: dict[str, Callable[[str, str], Pool]] = {
    loop.KIND: loop.open_pool,
    lvmthin.KIND: lvmthin.open_pool,
    "zfs": _open_zfs,
}
_LOCATION_HELP = {
    loop.KIND: "loop:/ABSOLUTE/DIR",
    lvmthin.KIND: "lvmthin:VG/THINPOOL",
    "zfs": "zfs:POOL/DATASET",
}


def known_kinds() -> list[str]:
    return sorted(_OPENERS)


@dataclass(frozen=True)
class PoolSpec:
    name: str
    kind: str
    location: str

    def __str__(self) -> str:
        return f"{self.name}={self.kind}:{self.location}"


def parse_pool_spec(text: str) -> PoolSpec:
    """`NAME=KIND:LOCATION`, e.g. `default=loop:/var/lib/cryptvol/pool`."""
    name, eq, rest = text.strip().partition("=")
    kind, colon, location = rest.partition(":")
    forms = ", ".join(f"NAME={form}" for form in _LOCATION_HELP.values())
    if not eq or not colon or not location:
        raise InvalidArgument(f"pool {quoted(text)} is not NAME=KIND:LOCATION ({forms})")
    if not _NAME.match(name):
        raise InvalidArgument(
            f"pool name {quoted(name)}: use lower-case letters, digits and '-' (at most 63)"
        )
    if kind not in _OPENERS:
        raise InvalidArgument(
            f"pool {quoted(name)}: unknown kind {quoted(kind)}; known kinds: "
            f"{', '.join(known_kinds())}"
        )
    return PoolSpec(name, kind, location)


class PoolRegistry:
    def __init__(self, pools: Sequence[Pool]) -> None:
        if not pools:
            raise InvalidArgument("configure at least one pool")
        self._pools = {p.name: p for p in pools}
        if len(self._pools) != len(pools):
            raise InvalidArgument("two pools have the same name")
        self.default = pools[0]

    def all(self) -> list[Pool]:
        return list(self._pools.values())

    @property
    def names(self) -> list[str]:
        return list(self._pools)

    def get(self, name: str) -> Pool:
        """The pool a StorageClass names (empty: the default); unknown names are the
        request's mistake."""
        if not name:
            return self.default
        pool = self._pools.get(name)
        if pool is None:
            raise InvalidArgument(
                f"pool {quoted(name)} is not configured on this driver; configured pools: "
                f"{', '.join(self._pools)}"
            )
        return pool

    def of_volume(self, volume_id: str, pool_name: str) -> Pool:
        """The pool an existing volume lives in; a driver started without that pool cannot
        serve the volume until it is configured again."""
        pool = self._pools.get(pool_name)
        if pool is None:
            raise FailedPrecondition(
                f"volume {volume_id} lives in pool {quoted(pool_name)}, which this driver does "
                f"not configure (configured: {', '.join(self._pools)}); add it with --pool"
            )
        return pool


def open_pools(specs: Sequence[PoolSpec]) -> PoolRegistry:
    pools = []
    for spec in specs:
        try:
            pools.append(_OPENERS[spec.kind](spec.name, spec.location))
        except ValueError as exc:
            raise InvalidArgument(f"pool {spec}: {exc}") from None
    return PoolRegistry(pools)
