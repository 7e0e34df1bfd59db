"""What a newcomer meets on the command line: one clear line and an exit code, never a
traceback, and no state created by commands that only look.

Each command runs as a subprocess, as a user types it. The permission cases run the command
as `nobody` (setpriv), which needs root; they skip elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptvol.cli.failures import FAILED, PERMISSION_DENIED, UNAVAILABLE, USAGE
from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.keys.manager import open_local
from support.driver import RunningDriver

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def cryptvol(*args: str, user: list[str] | None = None, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), sys.executable, "-m", "cryptvol", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=dict(os.environ, **(env or {})))


def fails(result: subprocess.CompletedProcess[str], code: int, *words: str,
          logged: bool = False) -> str:
    """Assert exit `code` and one `Error:` line on stderr holding every word; return it.
    With `logged` (a `serve` that got as far as starting), log lines may come before it."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    if logged:
        lines = [line for line in lines if " info " not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("running a command as nobody needs root and setpriv")
    path = Path(tempfile.mkdtemp(prefix="cryptvol-cli-"))
    path.chmod(0o755)
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import cryptvol"],
                           capture_output=True, timeout=60)
    if probe.returncode != 0:
        shutil.rmtree(path)
        pytest.skip("nobody cannot run this checkout's Python")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDriver]:
    running = RunningDriver(tmp_path_factory.mktemp("cli"), role="controller")
    running.start()
    yield running
    running.stop()


# -- no driver, no state -----------------------------------------------------------------


@pytest.mark.parametrize("command", [["volume", "list"], ["volume", "show", "cv-1"]])
def test_with_no_driver_running_volume_commands_say_so(tmp_path: Path, command: list[str]):
    endpoint = f"unix://{tmp_path}/none.sock"
    fails(cryptvol(*command, "--endpoint", endpoint), UNAVAILABLE,
          f"no driver answers on {endpoint}")


@pytest.mark.parametrize("command", [
    ["keys", "status"], ["state", "backup", "out.db"], ["keys", "prepare"],
    ["keys", "export", "--out", "kek.json", "--passphrase-file", "/dev/null"],
])
def test_commands_on_a_misspelt_state_dir_create_nothing(
    tmp_path: Path, command: list[str]
):
    typo = tmp_path / "sate"
    fails(cryptvol(*command, "--state-dir", str(typo), cwd=tmp_path), FAILED,
          f"no state store at {typo}/cryptvol.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- the config file -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    ("[serve]\npool_dri = '/x'\n", ["unknown key 'pool_dri' in [serve]", "pool_dir?"]),
    ("[server]\npool_dir = '/x'\n", ["unknown table [server]", "[serve]?"]),
    ("pool_dir = '/x'\n", ["'pool_dir' is outside any table"]),
    ("[serve]\npool_dir = '/x'\npool-dir = '/y'\n", ["sets pool_dir twice"]),
    ("[serve]\ngrace_seconds = -1\n", ["grace_seconds", "greater than or equal to 0"]),
    ("[serve\n", ["is not valid TOML"]),
])
def test_a_wrong_config_file_is_refused_in_one_line(tmp_path: Path, text: str, words: list[str]):
    config = tmp_path / "c.toml"
    config.write_text(text)
    fails(cryptvol("serve", "--config", str(config)), USAGE, str(config), *words)


def test_a_missing_config_file_is_refused_in_one_line(tmp_path: Path):
    fails(cryptvol("serve", "--config", str(tmp_path / "nope.toml")), USAGE,
          "cannot read config file", "No such file or directory")


def test_the_flag_spelling_of_a_key_is_accepted(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text("[serve]\nlog-level = 'loud'\nendpoint = 'tcp://x'\n")
    # Read as log_level: its value is what is refused.
    fails(cryptvol("serve", "--config", str(config)), USAGE, "log_level", "'debug'")


def test_a_wrong_endpoint_is_refused_before_anything_is_made(tmp_path: Path):
    fails(cryptvol("serve", "--endpoint", "tcp://x", "--state-dir", str(tmp_path / "state"),
                   "--pool-dir", str(tmp_path / "pool")), FAILED,
          "must be unix:///absolute/path")
    assert list(tmp_path.iterdir()) == []


# -- permissions ---------------------------------------------------------------------------


def _serve_as_nobody(shared: Path, **paths: str) -> subprocess.CompletedProcess[str]:
    """`serve` as nobody, by default on paths nobody owns; `paths` replaces some."""
    mine = shared / "mine"
    mine.mkdir(exist_ok=True)
    os.chown(mine, 65534, 65534)
    args = {"endpoint": f"unix://{mine}/csi.sock", "state_dir": str(mine / "state"),
            "pool_dir": str(mine / "pool"), **paths}
    flags = [part for name, value in args.items()
             for part in (f"--{name.replace('_', '-')}", value)]
    return cryptvol("serve", "--role", "controller", *flags, user=NOBODY)


def test_serve_without_permission_names_the_path(shared: Path):
    root_only = shared / "root-only"
    root_only.mkdir(mode=0o755)
    for which in ("state_dir", "pool_dir"):
        fails(_serve_as_nobody(shared, **{which: str(root_only / which)}), PERMISSION_DENIED,
              f"permission denied on {root_only / which}")
    # The socket's folder is made last, once the driver has its state: that start logged.
    fails(_serve_as_nobody(shared, endpoint=f"unix://{root_only}/run/csi.sock"),
          PERMISSION_DENIED, f"permission denied on {root_only / 'run'}", logged=True)


def test_an_existing_unwritable_state_dir_is_permission_denied_not_unavailable(shared: Path):
    state = shared / "state"
    store, _ = open_local(state)  # made by root: one store, one KEK
    store.close()
    state.chmod(0o755)
    for path in state.iterdir():
        path.chmod(0o644)
    fails(_serve_as_nobody(shared, state_dir=str(state)), PERMISSION_DENIED,
          f"permission denied on {state}")
    fails(cryptvol("keys", "status", "--state-dir", str(state), user=NOBODY),
          PERMISSION_DENIED, f"permission denied on {state}")


def test_a_driver_socket_that_is_not_ours_is_permission_denied(controller: RunningDriver):
    fails(cryptvol("volume", "list", "--endpoint", controller.endpoint, user=NOBODY),
          PERMISSION_DENIED, f"permission denied on {controller.endpoint.removeprefix('unix://')}")


# -- volumes through a driver -----------------------------------------------------------------


def test_volume_list_has_a_header_human_sizes_json_and_a_line_when_empty(
    controller: RunningDriver,
):
    empty = cryptvol("volume", "list", "--endpoint", controller.endpoint)
    assert empty.stdout == f"no volumes (driver on {controller.endpoint})\n"
    assert controller.client is not None
    made = controller.client.controller.CreateVolume(pb.CreateVolumeRequest(
        name="listed", volume_capabilities=[mount_capability("ext4")],
        capacity_range=pb.CapacityRange(required_bytes=64 << 20))).volume
    table = cryptvol("volume", "list", "--endpoint", controller.endpoint).stdout.splitlines()
    assert table[0].split() == ["ID", "SIZE", "FS", "KEY", "CIPHER", "PBKDF", "NODE"]
    assert table[1].split() == [made.volume_id, "64", "MiB", "ext4", "managed",
                                "aes-xts-plain64", "512-bit", "pbkdf2", "cryptvol.io/node=node-1"]
    listed = json.loads(cryptvol("volume", "list", "--json", "--endpoint",
                                 controller.endpoint).stdout)
    assert [(v["id"], v["capacity_bytes"], v["node"]) for v in listed] == [
        (made.volume_id, 64 << 20, "cryptvol.io/node=node-1")]
    shown = cryptvol("volume", "show", made.volume_id, "--endpoint", controller.endpoint)
    assert "node       cryptvol.io/node=node-1\n" in shown.stdout
    assert "size       64 MiB (67108864 bytes)\n" in shown.stdout
    fails(cryptvol("volume", "show", "cv-" + "0" * 32, "--endpoint", controller.endpoint),
          FAILED, "does not exist")


def test_state_backup_while_the_driver_runs_and_restore_refuses_its_live_store(
    controller: RunningDriver, tmp_path: Path
):
    state = ["--state-dir", str(controller.state_dir)]
    done = cryptvol("state", "backup", *state, str(tmp_path / "b.db"))
    assert done.returncode == 0 and "mode 0600" in done.stdout, done.stderr
    fails(cryptvol("state", "backup", *state, str(tmp_path / "b.db")), FAILED,
          "exists", "--force")
    fails(cryptvol("state", "restore", *state, "--force", str(tmp_path / "b.db")), FAILED,
          "stop it before restoring")


def test_state_backup_of_an_etcd_store_says_how_instead(tmp_path: Path):
    (tmp_path / "root.key").write_bytes(b"k" * 32)  # only init-root-key makes one
    fails(cryptvol("state", "backup", "--etcd-endpoints", "http://127.0.0.1:1",
                   "--root-key", str(tmp_path / "root.key"), str(tmp_path / "b.db")),
          FAILED, "etcdctl snapshot save")
