"""`cryptvol serve` as a process: socket, configuration sources, signals."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from cryptvol.csi.client import CsiClient
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.vm import dm_crypt_available
from support.driver import NOT_READY_WITHOUT_DM_CRYPT, RunningDriver, call_when_up


def test_the_socket_is_owner_only(driver):
    path = driver.work / "csi.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sigterm_drains_and_exits_zero_and_removes_the_socket(driver):
    assert driver.stop() == 0
    assert not (driver.work / "csi.sock").exists()


def test_a_stale_socket_from_a_crash_is_replaced(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "csi.sock"))
    stale.close()  # the file stays, nobody listens: what a SIGKILL leaves behind
    running = RunningDriver(tmp_path)
    running.start()
    running.stop()


def test_a_live_socket_is_not_taken_over(driver):
    other = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryptvol",
            "serve",
            "--endpoint",
            driver.endpoint,
            "--state-dir",
            str(driver.work / "state2"),
            "--pool-dir",
            str(driver.work / "pool2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode != 0
    assert "another server is serving" in other.stderr
    driver.client.identity.Probe(pb.ProbeRequest(), timeout=5)


def test_settings_come_from_environment_and_config_file(tmp_path):
    config = tmp_path / "cryptvol.toml"
    config.write_text(
        f'[serve]\nnode_id = "from-file"\nstate_dir = "{tmp_path}/state"\n'
        f'pool_dir = "{tmp_path}/pool"\n'
    )
    env = dict(
        os.environ, CRYPTVOL_CONFIG=str(config), CRYPTVOL_ENDPOINT=f"unix://{tmp_path}/env.sock"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryptvol", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with CsiClient(f"unix://{tmp_path}/env.sock") as client:
            info = call_when_up(lambda: client.node.NodeGetInfo(pb.NodeGetInfoRequest()))
            assert info.node_id == "from-file"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.parametrize("line", ['kek = "c2VjcmV0"', 'passphrase = "hunter2"'])
def test_a_config_file_cannot_carry_a_secret(tmp_path, line):
    config = tmp_path / "cryptvol.toml"
    config.write_text(f"[serve]\n{line}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown key" in result.stderr
    assert "hunter2" not in result.stderr and "c2VjcmV0" not in result.stderr


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_missing_or_corrupt_kek_file_stops_the_start_and_no_new_key_is_made(tmp_path, damage):
    from cryptvol.csi.client import mount_capability

    running = RunningDriver(tmp_path)
    client = running.start()
    client.controller.CreateVolume(pb.CreateVolumeRequest(
        name="v", volume_capabilities=[mount_capability("ext4")]))
    running.stop()
    kek = running.state_dir / "kek.json"
    if damage == "delete":
        kek.unlink()
    else:
        kek.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", running.endpoint,
         "--state-dir", str(running.state_dir), "--pool-dir", str(running.pool_dir)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "kek" in result.stderr.lower()
    if damage == "delete":
        assert not kek.exists()
    else:
        assert kek.read_text() == "{not json"


def test_an_endpoint_naming_a_regular_file_is_refused_and_the_file_kept(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "serve", "--endpoint", f"unix://{victim}",
         "--state-dir", str(tmp_path / "state"), "--pool-dir", str(tmp_path / "pool")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is a regular file, not a unix socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious"


@pytest.mark.skipif(dm_crypt_available(), reason="needs a host without device-mapper")
def test_without_dm_crypt_a_node_driver_is_not_ready_and_logs_why(driver, tmp_path):
    assert not driver.client.identity.Probe(pb.ProbeRequest()).ready.value
    said = [json.loads(line) for line in driver.log_lines() if NOT_READY_WITHOUT_DM_CRYPT in line]
    assert len(said) == 1 and said[0]["level"] == "error"
    assert "device-mapper" in said[0]["reason"] and "modprobe dm_crypt" in said[0]["fix"]
    # The controller role needs no mapping: the same host serves it, ready.
    controller = RunningDriver(tmp_path / "controller", role="controller")
    controller.work.mkdir()
    try:
        assert controller.start().identity.Probe(pb.ProbeRequest()).ready.value
    finally:
        controller.stop()
