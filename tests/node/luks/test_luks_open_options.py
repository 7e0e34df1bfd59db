"""Open options from the StorageClass reach dm-crypt: perf flags, discards, key location."""

from __future__ import annotations

import pytest

from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import parse_luks_parameters, plan
from cryptvol.luks.probe import HostProbe
from cryptvol.luks.token import read_policy_token, write_policy_token
from cryptvol.system import run
from cryptvol.system.secret import Secret

pytestmark = pytest.mark.node
KEY = Secret(bytes(range(32)))
NAME = "cryptvol-luks-node-test"


def _stage(host: HostProbe, device: str, params: dict[str, str]) -> tuple[str, str]:
    """Format and open `device` as CreateVolume + NodeStage would; return the table line
    and the `cryptsetup status` text."""
    assert host.dm_crypt
    luks_params = parse_luks_parameters(params)
    luks_plan = plan(luks_params, "managed", host)
    cryptsetup.format_device(device, KEY, luks_plan.format)
    write_policy_token(device, luks_params, luks_plan, host)
    cryptsetup.open_device(device, NAME, KEY, luks_plan.open)
    table = run(["dmsetup", "table", NAME]).stdout.strip()
    status = run(["cryptsetup", "status", NAME]).stdout
    return table, status


def test_perf_flags_and_discards_reach_the_dm_table(node_host: HostProbe, loop_device: str) -> None:
    table, status = _stage(
        node_host,
        loop_device,
        {"perfNoReadWorkqueue": "true", "perfNoWriteWorkqueue": "true", "allowDiscards": "true"},
    )
    for flag in ("allow_discards", "no_read_workqueue", "no_write_workqueue"):
        assert flag in table
    flags_line = next(ln for ln in status.splitlines() if ln.strip().startswith("flags:"))
    for flag in ("discards", "no_read_workqueue", "no_write_workqueue"):
        assert flag in flags_line


def test_without_flags_the_table_has_none(node_host: HostProbe, loop_device: str) -> None:
    table, _ = _stage(node_host, loop_device, {})
    for flag in ("allow_discards", "no_read_workqueue", "no_write_workqueue"):
        assert flag not in table


def test_the_volume_key_stays_in_the_kernel_keyring_by_default(
    node_host: HostProbe, loop_device: str
) -> None:
    table, _ = _stage(node_host, loop_device, {})
    state = cryptsetup.status(NAME)
    assert state is not None and state.key_location == "keyring"
    # dm-crypt names a keyring key (":64:logon:cryptsetup:...") instead of holding the key.
    assert table.split()[4].startswith(":")


def test_volume_key_in_keyring_false_keeps_it_in_the_dm_table(
    node_host: HostProbe, loop_device: str
) -> None:
    table, _ = _stage(node_host, loop_device, {"volumeKeyInKeyring": "false"})
    state = cryptsetup.status(NAME)
    assert state is not None and state.key_location == "dm-crypt"
    assert not table.split()[4].startswith(":")
    # With the key in the table, resize needs no key (the expansion issue relies on it).
    cryptsetup.resize(NAME, None)


def test_key_and_sector_size_reach_the_dm_table(node_host: HostProbe, loop_device: str) -> None:
    table, _ = _stage(node_host, loop_device, {"keySize": "256", "sectorSize": "4096"})
    cipher, key = table.split()[3:5]
    assert cipher == "aes-xts-plain64"
    assert key.startswith(":32:")  # a 256-bit key, held in the keyring
    assert "sector_size:4096" in table


def test_the_token_is_readable_on_the_staged_device(node_host: HostProbe, loop_device: str) -> None:
    _stage(node_host, loop_device, {"allowDiscards": "true"})
    recorded = read_policy_token(loop_device)
    assert recorded is not None
    assert recorded.open["allow_discards"] is True
