"""Pools are configured as NAME=KIND:LOCATION; a StorageClass names one, the first is the
default, and a name nobody configured is refused with the names that are."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument
from cryptvol.pools.registry import PoolSpec, open_pools, parse_pool_spec


def test_a_spec_names_the_pool_its_kind_and_location() -> None:
    assert parse_pool_spec("fast=loop:/srv/pool") == PoolSpec("fast", "loop", "/srv/pool")


@pytest.mark.parametrize("text", ["fast", "fast=loop", "fast=loop:", "=loop:/x", "Fast=loop:/x",
                                  "fast=tape:/dev/st0"])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pool_spec(text)


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"known kinds: .*loop"):
        parse_pool_spec("x=tape:/dev/st0")


def test_the_first_pool_is_the_default_and_others_go_by_name(tmp_path: Path) -> None:
    pools = open_pools([parse_pool_spec(f"a=loop:{tmp_path}/a"),
                        parse_pool_spec(f"b=loop:{tmp_path}/b")])
    assert pools.get("").name == "a"
    assert pools.get("b").location == f"{tmp_path}/b"
    assert (tmp_path / "b").is_dir()
    with pytest.raises(InvalidArgument, match="configured pools: a, b"):
        pools.get("c")
    with pytest.raises(FailedPrecondition, match="add it with --pool"):
        pools.of_volume("cv-1", "gone")


def test_a_relative_loop_directory_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        open_pools([parse_pool_spec("a=loop:relative/dir")])


def test_two_pools_cannot_share_a_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="same name"):
        open_pools([parse_pool_spec(f"a=loop:{tmp_path}/1"),
                    parse_pool_spec(f"a=loop:{tmp_path}/2")])
