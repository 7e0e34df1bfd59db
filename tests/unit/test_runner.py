import json
import os

import pytest

from cryptvol.system import CommandError, SecretFd, run, run_pipeline
from cryptvol.system.secret import Secret


def test_a_secret_reaches_the_command_on_stdin_only(tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CRYPTVOL_EXEC_AUDIT", str(audit))
    result = run(["sh", "-c", "cat; echo; env"], secret=b"hunter2-canary")
    assert result.stdout.startswith("hunter2-canary")
    assert "hunter2" not in result.stdout.split("\n", 1)[1]
    logged = audit.read_text()
    assert "hunter2" not in logged
    assert json.loads(logged.splitlines()[0])["argv"][0] == "sh"


def test_a_secret_can_travel_through_an_inherited_pipe():
    result = run(["cat", SecretFd("new")], fd_secrets={"new": b"pipe-secret"})
    assert result.stdout == "pipe-secret"
    assert all("pipe-secret" not in arg for arg in result.argv)


def test_a_failure_names_the_command_and_exit_code_but_not_the_input():
    with pytest.raises(CommandError) as info:
        run(["sh", "-c", "cat >/dev/null; echo oops >&2; exit 3"], secret=b"canary-in-stdin")
    assert info.value.returncode == 3
    assert "sh exited with code 3" in str(info.value)
    assert "oops" in str(info.value)
    assert "canary" not in str(info.value)


def test_a_hung_command_times_out():
    with pytest.raises(CommandError, match="timed out"):
        run(["sleep", "5"], timeout=0.2)


def test_a_missing_command_is_a_clear_error():
    with pytest.raises(CommandError, match="command not found"):
        run(["no-such-command-cryptvol"])


def test_commands_get_a_small_environment_without_the_callers_variables(monkeypatch):
    monkeypatch.setenv("CRYPTVOL_TEST_LEAK", "leaky")
    env = run(["env"]).stdout
    assert "leaky" not in env
    assert "LC_ALL=C" in env


def test_a_secret_never_prints():
    secret = Secret(b"\x01\x02topsecret")
    assert "topsecret" not in repr(secret)
    assert "topsecret" not in str(secret)
    assert "topsecret" not in f"{secret}"
    assert secret.reveal() == b"\x01\x02topsecret"
    assert os.urandom(0) == b""


def test_a_pipeline_streams_one_command_into_the_next(tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CRYPTVOL_EXEC_AUDIT", str(audit))
    result = run_pipeline(["printf", "a\\nb\\n"], ["wc", "-l"])
    assert result.stdout.strip() == "2"
    assert [json.loads(line)["argv"][0] for line in audit.read_text().splitlines()] == [
        "printf", "wc"]


def test_a_pipeline_names_the_consumer_that_refused_the_stream():
    with pytest.raises(CommandError) as info:
        run_pipeline(["yes"], ["sh", "-c", "head -c 10 >/dev/null; echo refused >&2; exit 4"])
    assert info.value.command == "sh" and info.value.returncode == 4
    assert "refused" in str(info.value)


def test_a_pipeline_whose_producer_fails_says_so():
    with pytest.raises(CommandError) as info:
        run_pipeline(["sh", "-c", "echo broken >&2; exit 2"], ["cat"])
    assert info.value.returncode == 2 and "broken" in str(info.value)


def test_a_hung_pipeline_times_out():
    with pytest.raises(CommandError, match="timed out"):
        run_pipeline(["sleep", "5"], ["cat"], timeout=0.3)
