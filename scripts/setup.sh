#!/usr/bin/env bash
# Install everything cryptvol needs on a Debian 12 machine, as root, idempotently:
# the apt packages every part lists in scripts/*apt-packages.txt, a venv in .venv with the
# pinned Python dependencies, and the gRPC stubs generated from the project's csi.proto,
# kms.proto and etcd.proto.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and later uses loop devices)" >&2
    exit 1
fi

# ZFS (scripts/zfs-apt-packages.txt) lives in Debian's contrib component.
enable_contrib() {
    local changed=0 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        if grep -q '^URIs:.*debian' "$f" && grep -q '^Components:' "$f" \
                && grep '^Components:' "$f" | grep -qv contrib; then
            sed -i '/^Components:/{/contrib/!s/$/ contrib/}' "$f"
            changed=1
        fi
    done
    if [ -f /etc/apt/sources.list ] \
            && grep -Eq '^deb .*debian.* main( |$)' /etc/apt/sources.list \
            && grep -E '^deb .*debian.* main( |$)' /etc/apt/sources.list | grep -qv contrib; then
        sed -i -E '/^deb .*debian.* main( |$)/{/contrib/!s/ main( |$)/ main contrib\1/}' \
            /etc/apt/sources.list
        changed=1
    fi
    if [ "$changed" = 1 ]; then
        echo "setup: enabled Debian's contrib component (for ZFS)"
        apt-get update -qq
    fi
}
enable_contrib

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

# The test VM's ZFS module is built by dkms against the VM's kernel, whose release follows
# the package lists: install that kernel's headers (dkms then builds the module: minutes).
release=$(.venv/bin/cryptvol vm kernel-release)
headers="linux-headers-$release"
if ! dpkg-query -W -f='${Status}' "$headers" 2>/dev/null | grep -q "ok installed"; then
    echo "setup: installing $headers; dkms builds the ZFS module for the test VM (minutes)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        --no-install-recommends "$headers" >/dev/null
fi
echo "setup: done (venv: .venv, CLI: .venv/bin/cryptvol)"
