"""The OCI image that deploy/image/build.sh makes, built once per test session and unpacked.

The build is the real one (mmdebstrap, umoci): its Debian root filesystem is cached in
/var/cache/cryptvol/image by a hash of the package list, so only a fresh machine pays for
the bootstrap (about a minute).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryptvol import __version__

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "deploy" / "image" / "build.sh"


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap's root mode, chroot)")
    layout = tmp_path_factory.mktemp("image") / "oci"
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(BUILD), str(layout)], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, f"image build failed:\n{done.stdout}\n{done.stderr}"
    assert "image size:" in done.stdout
    return layout


@pytest.fixture(scope="session")
def image_root(image_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's root filesystem, unpacked the way a container runtime would."""
    bundle = tmp_path_factory.mktemp("bundle") / "cryptvol"
    subprocess.run(["umoci", "unpack", "--image", f"{image_layout}:{__version__}", str(bundle)],
                   check=True, capture_output=True, timeout=300)
    return bundle / "rootfs"
