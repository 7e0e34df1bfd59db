#!/usr/bin/env bash
# Install everything cryptvol needs on a Debian 12 machine, as root, idempotently:
# the apt packages every part lists in scripts/*apt-packages.txt, a venv in .venv with the
# pinned Python dependencies, and the gRPC stubs generated from the project's csi.proto and
# kms.proto.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and later uses loop devices)" >&2
    exit 1
fi

packages=$(cat scripts/*apt-packages.txt | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u | tr '\n' ' ')
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $packages 2>/dev/null \
          | awk '$4 != "installed" {print $1}' || true)
# dpkg-query prints nothing for packages it has never heard of; count those as missing too.
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
missing=$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ -n "${missing// /}" ]; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        --no-install-recommends $missing >/dev/null
fi
# The VM build resolves the newest kernel from the package lists: make sure they exist.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock || true)" ]; then
    apt-get update -qq
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python scripts/gen_proto.py
echo "setup: done (venv: .venv, CLI: .venv/bin/cryptvol)"
