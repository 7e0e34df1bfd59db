#!/usr/bin/env bash
# Set up, then run the end-to-end demo on the embedded default (loop-file pool, SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cryptvol demo "$@"
