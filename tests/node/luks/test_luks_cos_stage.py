"""A COS-like node (cryptsetup without argon2): argon2id asked with the default fallback
formats with pbkdf2, opens, and the header records why."""

from __future__ import annotations

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import parse_luks_parameters, plan
from cryptvol.luks.probe import HostProbe
from cryptvol.luks.token import read_policy_token, write_policy_token
from cryptvol.system.secret import Secret

pytestmark = pytest.mark.node
PASSPHRASE = Secret(b"correct horse battery staple")
NAME = "cryptvol-luks-cos-test"


def test_argon2id_with_fallback_stages_on_cos(cos_host: HostProbe, loop_device: str) -> None:
    host = cos_host
    assert not host.argon2 and host.dm_crypt
    params = parse_luks_parameters({"pbkdf": "argon2id", "iterTime": "50", "allowDiscards": "true"})
    luks_plan = plan(params, "passphrase", host)
    cryptsetup.format_device(loop_device, PASSPHRASE, luks_plan.format)
    write_policy_token(loop_device, params, luks_plan, host)
    cryptsetup.open_device(loop_device, NAME, PASSPHRASE, luks_plan.open)
    state = cryptsetup.status(NAME)
    assert state is not None and state.device == loop_device
    recorded = read_policy_token(loop_device)
    assert recorded is not None
    assert "fell back to pbkdf2" in recorded.describe()


def test_argon2id_without_fallback_is_refused_on_cos(cos_host: HostProbe, loop_device: str) -> None:
    params = parse_luks_parameters({"pbkdf": "argon2id", "pbkdfFallback": "false"})
    with pytest.raises(FailedPrecondition):
        plan(params, "passphrase", cos_host)
    assert not cryptsetup.is_luks(loop_device)
