"""What the host hands the guest: a command script and the folders the guest must see."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptvol.vm.boot import _keep_paths, _prepare_control, guest_env, qemu_argv
from cryptvol.vm.guest_init import CONTROL_DIR, INIT_SCRIPT, LVM_CONF
from cryptvol.vm.parts import Parts


def test_the_command_script_runs_the_argv_in_its_folder_with_only_its_environment(
    tmp_path: Path,
) -> None:
    awkward = 'it\'s a "quoted" $HOME `arg`; with spaces'
    ctl = _prepare_control(
        tmp_path,
        ["sh", "-c", 'printf "%s|%s|%s|%s" "$1" "$(pwd)" "$EXTRA" "$SECRET_HOST"', "sh", awkward],
        Path("/usr"),
        {"EXTRA": "x y"},
    )
    # The guest's init runs it with the host root's /bin/sh; the host's is the same one.
    out = subprocess.run(
        ["/bin/sh", str(ctl / "command.sh")],
        capture_output=True,
        text=True,
        env={"SECRET_HOST": "leak"},
        check=True,
    ).stdout
    assert out == f"{awkward}|/usr|x y|"


def test_the_guest_environment_says_it_is_the_vm_and_has_no_udev() -> None:
    env = guest_env({"EXTRA": "1"})
    assert env["CRYPTVOL_IN_VM"] == "1"
    assert env["DM_DISABLE_UDEV"] == "1"
    assert env["EXTRA"] == "1"
    assert "/usr/sbin" in env["PATH"]


def test_the_control_files_name_the_work_folder_and_start_empty(tmp_path: Path) -> None:
    ctl = _prepare_control(tmp_path, ["true"], Path("/"), {})
    assert ctl == tmp_path / CONTROL_DIR
    assert (ctl / "work_path").read_text() == f"{tmp_path}\n"
    assert (ctl / "stdout").read_bytes() == b""
    assert not (ctl / "exit_code").exists()


def test_folders_hidden_by_the_guests_tmpfs_are_kept_once(tmp_path: Path) -> None:
    project = tmp_path / "checkout"
    (project / ".venv").mkdir(parents=True)
    work = Path("/tmp/elsewhere-work")
    kept = _keep_paths([project, project / ".venv", Path("/usr"), work], work)
    assert kept == [project]


def test_the_vm_has_no_network_and_sees_the_host_root_read_only(tmp_path: Path) -> None:
    parts = Parts(
        "6.1.0-1-amd64", Path("/k"), Path("/i"), built=False, seconds=0.0, cache_dir=tmp_path
    )
    argv = qemu_argv(parts, tmp_path / "a,b", tmp_path / "serial.log", 1024, "tcg")
    assert argv[argv.index("-nic") + 1] == "none"
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert any("path=/," in s and "readonly=on" in s for s in shares)
    assert any(f"path={tmp_path}/a,,b," in s and "readonly" not in s for s in shares)
    assert "-append" in argv and "ttyS0" in argv[argv.index("-append") + 1]


def test_the_init_gives_lvm_its_udev_less_config() -> None:
    assert "udev_sync = 0" in LVM_CONF
    assert "obtain_device_list_from_udev = 0" in LVM_CONF
    assert LVM_CONF in INIT_SCRIPT
