"""Loop devices with real dm-crypt (these tests run inside the test VM)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptvol.luks import cryptsetup
from cryptvol.luks.probe import HostProbe, probe_host
from cryptvol.system import run

COS_PREFIX = Path(
    os.environ.get("CRYPTVOL_COS_CRYPTSETUP_PREFIX", "/var/cache/cryptvol/cos-cryptsetup")
)
DEVICE_BYTES = 64 * 1024 * 1024

pytestmark = pytest.mark.node


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device over a sparse file; any mapping made on it is closed after."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(DEVICE_BYTES)
    device = run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
    try:
        yield device
    finally:
        for name in _mappings_on(device):
            cryptsetup.close_device(name)
        run(["losetup", "--detach", device], check=False)


def _mappings_on(device: str) -> list[str]:
    result = run(["dmsetup", "ls", "--target", "crypt"], check=False)
    names = [
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith("No devices")
    ]
    return [n for n in names if (s := cryptsetup.status(n)) is not None and s.device == device]


@pytest.fixture(scope="session")
def node_host() -> HostProbe:
    """This node's probe, taken once as the driver does at start (slow under emulation)."""
    return probe_host()


@pytest.fixture(scope="session")
def cos_sbin() -> Path:
    """The COS-like cryptsetup (no argon2). The VM mounts the host's root read-only, so
    the host builds it first: scripts/build-cos-cryptsetup.sh."""
    if not (COS_PREFIX / ".cryptvol-built").exists():
        why = (
            f"no COS-like cryptsetup at {COS_PREFIX}: run "
            "scripts/build-cos-cryptsetup.sh on the host before the node suite"
        )
        if os.environ.get("CI"):
            pytest.fail(why)  # CI runs scripts/test.sh, which builds it: never skip there
        pytest.skip(why)
    return COS_PREFIX / "sbin"


@pytest.fixture(scope="session")
def cos_probe(cos_sbin: Path) -> HostProbe:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRYPTVOL_PATH_PREFIX", str(cos_sbin))
        return probe_host()


@pytest.fixture
def cos_host(cos_sbin: Path, cos_probe: HostProbe, monkeypatch: pytest.MonkeyPatch) -> HostProbe:
    """The COS-like cryptsetup first on PATH for every command; returns its probe."""
    monkeypatch.setenv("CRYPTVOL_PATH_PREFIX", str(cos_sbin))
    return cos_probe
