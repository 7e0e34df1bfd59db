#!/usr/bin/env bash
# Build cryptvol's OCI image with no registry and no container engine:
#   layer 1: a Debian root filesystem made by mmdebstrap from packages.txt, cached by a hash
#            of that list (and of everything else that shapes it);
#   layer 2: a virtualenv /opt/cryptvol with cryptvol's wheel and the exact Python
#            dependencies of requirements.txt, installed by the image's own python3.
# The result is an OCI image layout (umoci) at $OUT with the tag $TAG; the last lines
# printed say its size.
#
# Usage: deploy/image/build.sh [OUT]        (as root: mmdebstrap's root mode and chroot)
# Environment: CRYPTVOL_IMAGE_CACHE (default /var/cache/cryptvol/image),
#              CRYPTVOL_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CRYPTVOL_IMAGE_CACHE:-/var/cache/cryptvol/image}
mirror=${CRYPTVOL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
out=${1:-$cache/oci}
python=${PYTHON:-$repo/.venv/bin/python}
version=$("$python" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$repo/pyproject.toml")
tag=$version

if [ "$(id -u)" != 0 ]; then
    echo "build.sh: run as root (mmdebstrap's root mode and chroot need it)" >&2
    exit 1
fi
for tool in mmdebstrap umoci; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (scripts/image-apt-packages.txt)" >&2; exit 1; }
done
mkdir -p "$cache"
# One build at a time per cache (a test session and a benchmark may share it).
exec 9>"$cache/.lock"
flock 9
work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

packages=$(sed 's/#.*//' "$here/packages.txt" | tr -s ' \n' '\n' | sed '/^$/d' | sort -u)
# Documentation, manuals and translations are dead weight in a driver image.
dpkgopts=(
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)
sources=(
    "deb $mirror $suite main contrib"
    "deb $mirror $suite-updates main contrib"
    "deb ${mirror%/debian}/debian-security $suite-security main contrib"
)
# essential: Essential:yes packages plus ours, no apt in the image; the apt cache is dropped
# so the layer holds only the installed system. The merged-usr hook lays out /usr merged from
# the start and satisfies init-system-helpers with usr-is-merged; without it apt picks
# usrmerge, which pulls in perl (about 50 MiB).
bootstrap=(
    mmdebstrap --quiet --mode=root --variant=essential --format=tar
    --include="$(echo $packages | tr ' ' ,)" "${dpkgopts[@]}"
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --customize-hook='rm -rf "$1"/var/cache/apt "$1"/var/lib/apt/lists "$1"/var/log/*'
    "$suite" "$work/rootfs.tar" "${sources[@]}"
)
# The cache key: every argument but the temporary output path.
key=$(printf '%s\n' "${bootstrap[@]}" | grep -vxF "$work/rootfs.tar" | sha256sum | cut -c1-16)

# Layer 1, cached: the Debian root filesystem and the OCI layout holding only it (umoci
# compresses a layer on adding it, which is most of a warm build's time otherwise).
base_layout=$cache/base-$key
if [ ! -f "$base_layout/index.json" ]; then
    echo "image: bootstrapping Debian $suite ($(echo $packages | wc -w) packages, key $key)"
    # mmdebstrap and its hooks talk a lot: keep it for a failure.
    "${bootstrap[@]}" > "$work/bootstrap.log" 2>&1 || { tail -40 "$work/bootstrap.log" >&2; exit 1; }
    rm -rf "$work/base"
    umoci init --layout "$work/base"
    umoci new --image "$work/base:base"
    umoci raw add-layer --image "$work/base:base" \
        --history.created_by="mmdebstrap $suite: $(echo $packages)" "$work/rootfs.tar"
    rm -rf "$base_layout"
    mv "$work/base" "$base_layout"
    # Keep the unpacked tar too: layer 2 is built in a chroot of it.
    mv "$work/rootfs.tar" "$cache/rootfs-$key.tar"
    find "$cache" -maxdepth 1 \( -name 'base-*' -o -name 'rootfs-*.tar' \) \
        ! -name "base-$key" ! -name "rootfs-$key.tar" -exec rm -rf {} +
else
    echo "image: Debian root filesystem from the cache (key $key)"
fi

# Wheels: cryptvol's own and requirements.txt's, built once per lock file and version.
wheel_key=$(cat "$here/requirements.txt" | sha256sum | cut -c1-16)
wheels=$cache/wheels-$wheel_key
if [ ! -d "$wheels" ]; then
    "$python" -m pip download --quiet --only-binary=:all: --no-deps \
        --dest "$work/wheels" -r "$here/requirements.txt"
    mv "$work/wheels" "$wheels"
fi
rm -rf "$work/own"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/own" "$repo"

# Layer 2: the virtualenv, made and filled by the image's python3 in a chroot of layer 1.
root=$work/root
mkdir -p "$root"
# The host's environment (PIP_* settings, paths of its venv) has no business in the image.
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" "$@"; }
tar -C "$root" -xf "$cache/rootfs-$key.tar"
mkdir -p "$root/tmp/wheels"
cp "$wheels"/*.whl "$work"/own/*.whl "$here/requirements.txt" "$root/tmp/wheels/"
in_root /usr/bin/python3 -m venv /opt/cryptvol
in_root /opt/cryptvol/bin/python -m pip install --quiet --no-index --no-compile \
    --disable-pip-version-check --find-links /tmp/wheels \
    -r /tmp/wheels/requirements.txt cryptvol=="$version"
in_root /opt/cryptvol/bin/python -m pip uninstall --quiet --yes pip
# Byte-compile once now, so the driver's start in a read-only image does not try to.
in_root /opt/cryptvol/bin/python -m compileall -q /opt/cryptvol/lib >/dev/null
mkdir -p "$root/usr/local/bin"
ln -sf /opt/cryptvol/bin/cryptvol "$root/usr/local/bin/cryptvol"
tar -C "$root" --numeric-owner -cf "$work/app.tar" opt/cryptvol usr/local/bin/cryptvol

rm -rf "$work/image"
cp -a "$base_layout" "$work/image"
umoci raw add-layer --image "$work/image:base" --tag "$tag" \
    --history.created_by="cryptvol $version and requirements.txt" "$work/app.tar"
umoci config --image "$work/image:$tag" \
    --config.entrypoint=/opt/cryptvol/bin/cryptvol --config.cmd=serve \
    --config.env=PATH=/opt/cryptvol/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.label=org.opencontainers.image.title=cryptvol \
    --config.label=org.opencontainers.image.version="$version"
umoci rm --image "$work/image:base"
umoci gc --layout "$work/image"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$work/image" "$out"

# Size: what a registry stores and a node pulls (compressed blobs), and unpacked.
compressed=$(find "$out/blobs" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
unpacked=$(( $(stat -c %s "$cache/rootfs-$key.tar") + $(stat -c %s "$work/app.tar") ))
echo "image: $out:$tag"
awk -v c="$compressed" -v u="$unpacked" \
    'BEGIN {printf "image size: %.1f MiB compressed, %.1f MiB unpacked\n", c/1048576, u/1048576}'
