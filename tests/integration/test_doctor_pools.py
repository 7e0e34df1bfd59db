"""`cryptvol doctor` reports the pools the driver is configured with, on this host."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cryptvol.cli.doctor import doctor_command, pool_checks
from cryptvol.pools.registry import parse_pool_spec


def test_doctor_reports_each_configured_pool(tmp_path: Path) -> None:
    result = CliRunner().invoke(doctor_command, ["--json", "--pool", f"files=loop:{tmp_path}"])
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["pool files"]["verdict"] == "ok"
    assert checks["pool files"]["value"].startswith(f"loop:{tmp_path}, ")
    assert checks["pool files"]["value"].endswith(" MiB free")


def test_doctor_reads_the_pools_from_the_drivers_config_file(tmp_path: Path) -> None:
    config = tmp_path / "cryptvol.toml"
    config.write_text(f'[serve]\nnode_id = "n1"\npool = ["cfg=loop:{tmp_path}/p"]\n')
    result = CliRunner().invoke(doctor_command, ["--json", "--config", str(config)])
    assert any(c["name"] == "pool cfg" for c in json.loads(result.output)["checks"])


def test_without_pools_doctor_says_how_to_give_them() -> None:
    (check,) = pool_checks([])
    assert check.value == "none given" and "--pool" in check.advice


def test_a_zfs_pool_that_cannot_serve_fails_saying_what_to_do() -> None:
    """This host's kernel has no ZFS module (and no zpool of that name): the pool's line
    fails and says what to do (`modprobe zfs`, or create the dataset)."""
    (check,) = pool_checks([parse_pool_spec("z=zfs:no-such-zpool/cryptvol")])
    assert check.name == "pool z" and check.verdict == "fail"
    assert any(hint in check.advice for hint in ("modprobe zfs", "zfsutils-linux", "zfs create"))
