"""README.md's backup and restore procedure, run as written, brings a volume's data back.

The shell blocks under "### Back up" and "### Restore" are read from the README and run with
bash, `cryptvol` on the PATH and the state dir in CRYPTVOL_STATE_DIR, so the page cannot
drift from what works: the state dir is then lost in between, and the volume must stage
again with its data.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from support.co import create_volume
from support.driver import RunningDriver

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```sh block under the README heading that starts with `heading`."""
    text = README.read_text()
    start = text.index(f"\n{heading}")
    match = re.compile(r"```sh\n(.*?)```", re.DOTALL).search(text, start)
    assert match, f"no sh block under {heading!r} in README.md"
    return match.group(1)


def run_block(block: str, cwd: Path, state_dir: Path) -> str:
    env = dict(os.environ, CRYPTVOL_STATE_DIR=str(state_dir),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block}\nfailed:\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_readme_backup_and_restore_bring_a_volume_back(tmp_path: Path) -> None:
    driver = RunningDriver(tmp_path / "node")
    driver.work.mkdir()
    client = driver.start()
    vol = create_volume(client, tmp_path, "kept", "ext4")
    vol.stage()
    vol.publish()
    digest = vol.write(seed=b"BACKED-UP")
    vol.release()
    backups = tmp_path / "backups"
    backups.mkdir()
    run_block(readme_block("### Back up"), backups, driver.state_dir)  # driver running
    driver.stop()

    shutil.rmtree(driver.state_dir)  # the disaster: state dir gone
    status = run_block(readme_block("### Restore"), backups, driver.state_dir)
    assert re.search(r"^DEKs:\s+1$", status, re.MULTILINE), status

    vol.csi = driver.start()
    try:
        vol.stage()
        vol.publish()
        assert vol.checksum() == digest
        vol.release()
        vol.delete()
    finally:
        driver.stop()
