"""The driver on a host whose cryptsetup has no argon2, like Google's Container-Optimized OS.

The COS-like cryptsetup is Debian's own source built without argon2
(scripts/build-cos-cryptsetup.sh) and put first on the PATH of every command the driver runs.
"""

import os
import subprocess
from pathlib import Path

import grpc
import pytest

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from support.driver import RunningDriver

REPO = Path(__file__).resolve().parents[3]
COS_PREFIX = Path(os.environ.get("CRYPTVOL_COS_CRYPTSETUP_PREFIX",
                                 "/var/cache/cryptvol/cos-cryptsetup"))
ARGON2 = {"keySource": "secret", "pbkdf": "argon2id"}
SECRETS = {"passphrase": "a passphrase for a COS node"}


@pytest.fixture(scope="module")
def cos_driver(tmp_path_factory):
    subprocess.run(["bash", str(REPO / "scripts" / "build-cos-cryptsetup.sh")], check=True,
                   timeout=1800)
    running = RunningDriver(tmp_path_factory.mktemp("cos"),
                            extra_env={"CRYPTVOL_PATH_PREFIX": str(COS_PREFIX / "sbin")})
    running.start()
    yield running
    running.stop()


def _create(driver, name, params):
    return driver.client.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability("ext4")], parameters=params,
        capacity_range=pb.CapacityRange(required_bytes=64 << 20), secrets=SECRETS)).volume


def test_doctor_reports_argon2_unavailable(cos_driver):
    env = dict(os.environ, CRYPTVOL_PATH_PREFIX=str(COS_PREFIX / "sbin"))
    result = subprocess.run([str(REPO / ".venv/bin/cryptvol"), "doctor"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "argon2" in result.stdout
    assert "unavailable" in result.stdout


def test_argon2_asked_falls_back_to_pbkdf2_and_says_why(cos_driver):
    volume = _create(cos_driver, "cos-fallback", ARGON2)
    assert volume.volume_context["pbkdf"] == "pbkdf2"
    assert "argon2id asked" in volume.volume_context["luks"]
    assert "fell back to pbkdf2" in volume.volume_context["luks"]


def test_argon2_without_fallback_is_refused_before_anything_is_written(cos_driver):
    before = sorted(os.listdir(cos_driver.pool_dir))
    with pytest.raises(grpc.RpcError) as info:
        _create(cos_driver, "cos-strict", ARGON2 | {"pbkdfFallback": "false"})
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "argon2" in info.value.details()
    assert sorted(os.listdir(cos_driver.pool_dir)) == before
    listed = cos_driver.client.controller.ListVolumes(pb.ListVolumesRequest())
    assert all(e.volume.volume_id != "cos-strict" for e in listed.entries)
