#!/usr/bin/env bash
# Set up, then run the checks and the whole test suite: unit, integration and node tests
# (node tests boot a throwaway VM with a real kernel when this host has no device-mapper).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A cryptsetup built without argon2, like Google's COS ships: the host-policy tests use it.
bash scripts/build-cos-cryptsetup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/pytest -q -ra "$@"
