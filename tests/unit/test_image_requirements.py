"""The image installs exactly deploy/image/requirements.txt: it must pin each of cryptvol's
runtime dependencies at the version pyproject.toml pins, so the image runs what the tests
ran."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_image_lock_pins_every_runtime_dependency_as_pyproject_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    locked = _pins((ROOT / "deploy" / "image" / "requirements.txt").read_text().splitlines())
    assert {name: locked.get(name) for name in wanted} == wanted
