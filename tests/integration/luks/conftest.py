"""Real cryptsetup on header files (no dm-crypt needed), stock and COS-like builds."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "scripts" / "build-cos-cryptsetup.sh"
COS_PREFIX = Path(
    os.environ.get("CRYPTVOL_COS_CRYPTSETUP_PREFIX", "/var/cache/cryptvol/cos-cryptsetup")
)
HEADER_BYTES = 16 * 1024 * 1024


@pytest.fixture(scope="session")
def cos_sbin() -> Path:
    """cryptsetup 2.6.1 from Debian's source without argon2, built once and cached."""
    if os.geteuid() != 0:
        pytest.skip("building the COS-like cryptsetup installs build dependencies: needs root")
    subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        check=True,
        timeout=1800,
        env={**os.environ, "CRYPTVOL_COS_CRYPTSETUP_PREFIX": str(COS_PREFIX)},
    )
    return COS_PREFIX / "sbin"


@pytest.fixture
def cos_host(cos_sbin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every command cryptvol runs finds the COS-like cryptsetup first on PATH."""
    monkeypatch.setenv("CRYPTVOL_PATH_PREFIX", str(cos_sbin))
    yield cos_sbin


@pytest.fixture
def header(tmp_path: Path) -> Path:
    """A blank sparse file big enough for a LUKS2 header."""
    path = tmp_path / "volume.img"
    with open(path, "wb") as f:
        f.truncate(HEADER_BYTES)
    return path
