"""On a COS-like node (cryptsetup without argon2), a volume that asked for argon2id is
formatted with pbkdf2, stages, keeps its data, and its header says why."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.co import create_volume
from support.driver import RunningDriver

COS_SBIN = Path(os.environ.get("CRYPTVOL_COS_CRYPTSETUP_PREFIX",
                               "/var/cache/cryptvol/cos-cryptsetup")) / "sbin"


@pytest.fixture
def cos_driver(tmp_path):
    if not (COS_SBIN / "cryptsetup").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COS_SBIN}/cryptsetup missing: scripts/test.sh builds it")
        pytest.skip("run scripts/build-cos-cryptsetup.sh first")
    running = RunningDriver(tmp_path / "cos", extra_env={"CRYPTVOL_PATH_PREFIX": str(COS_SBIN)})
    running.work.mkdir()
    running.start()
    yield running
    running.stop()


def test_argon2_asked_on_a_cos_node_stages_with_pbkdf2_and_records_why(cos_driver, tmp_path):
    vol = create_volume(cos_driver.client, tmp_path, "cos-vol", "ext4",
                        parameters={"keySource": "secret", "pbkdf": "argon2id"},
                        secrets={"passphrase": "cos passphrase"})
    vol.stage()
    vol.publish()
    digest = vol.write()
    vol.cycle(digest)
    backing = cos_driver.pool_dir / f"{vol.volume_id}.img"
    meta = json.loads(subprocess.run(
        [str(COS_SBIN / "cryptsetup"), "luksDump", "--dump-json-metadata", str(backing)],
        capture_output=True, text=True, check=True).stdout)
    kdfs = {slot["kdf"]["type"] for slot in meta["keyslots"].values()}
    assert kdfs == {"pbkdf2"}
    tokens = [t for t in meta["tokens"].values() if t["type"] == "cryptvol-policy"]
    assert tokens, "the header carries no cryptvol-policy token"
    assert "fell back to pbkdf2" in json.dumps(tokens[0])
    vol.release()
