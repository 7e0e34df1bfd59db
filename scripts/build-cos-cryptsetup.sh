#!/usr/bin/env bash
# Build cryptsetup from Debian's own source package without any argon2 (neither the bundled
# implementation nor libargon2), the way Google's Container-Optimized OS ships it. Tests put
# "$PREFIX/sbin" first on PATH (CRYPTVOL_PATH_PREFIX) to act like a COS node.
#
#   scripts/build-cos-cryptsetup.sh            # builds once into the cached prefix
#   CRYPTVOL_COS_CRYPTSETUP_PREFIX=/x scripts/build-cos-cryptsetup.sh
#
# Idempotent: a prefix that holds a finished build (stamp file) is left alone. The system's
# apt sources are not touched: the source package is fetched through a private apt list.
set -euo pipefail

PREFIX="${CRYPTVOL_COS_CRYPTSETUP_PREFIX:-/var/cache/cryptvol/cos-cryptsetup}"
SUITE="${CRYPTVOL_COS_DEBIAN_SUITE:-bookworm}"
MIRROR="${CRYPTVOL_COS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STAMP="$PREFIX/.cryptvol-built"
BUILD_DEPS=(
    build-essential dpkg-dev pkg-config autoconf automake libtool autopoint gettext
    libdevmapper-dev libjson-c-dev uuid-dev libblkid-dev libssl-dev libpopt-dev
)

log() { printf 'build-cos-cryptsetup: %s\n' "$*" >&2; }

if [[ -f "$STAMP" && -x "$PREFIX/sbin/cryptsetup" ]]; then
    log "already built: $PREFIX ($(cat "$STAMP"))"
    exit 0
fi

mkdir -p "$(dirname "$PREFIX")"
# Two concurrent runs (two test sessions) must not interleave their installs.
exec 9>"$PREFIX.lock"
flock 9
if [[ -f "$STAMP" && -x "$PREFIX/sbin/cryptsetup" ]]; then
    log "already built by a concurrent run: $PREFIX"
    exit 0
fi

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing build dependencies: ${missing[*]}"
    install=(apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends
             "${missing[@]}")
    # On a fresh machine the package lists may be missing or stale: update once and retry.
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2 \
        || { apt-get update -qq -o DPkg::Lock::Timeout=600 >&2 \
             && DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2; }
fi

work="$(mktemp -d /tmp/cos-cryptsetup.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's sandbox user must be able to write the downloads

# A private apt configuration with only deb-src lines: enabling deb-src system-wide would
# change apt for everyone else on the machine.
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
cat >"$work/apt/sources.list" <<EOF
deb-src $MIRROR $SUITE main
deb-src $MIRROR $SUITE-updates main
EOF
apt_private=(
    -o "Dir::Etc::SourceList=$work/apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "Dir::Cache=$work/apt/cache"
    -o "APT::Sandbox::User=root"
)
log "fetching the cryptsetup source package ($SUITE)"
apt-get "${apt_private[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_private[@]}" source -qq cryptsetup >&2)
src="$(find "$work" -maxdepth 1 -type d -name 'cryptsetup-*' | head -n1)"
[[ -n "$src" ]] || { log "no source tree after apt-get source"; exit 1; }
version="$(cd "$src" && dpkg-parsechangelog -S Version)"
log "building cryptsetup $version without argon2"

cd "$src"
./autogen.sh >&2
# RPATH (not RUNPATH) pins the binary to its own libcryptsetup: the system one has argon2 and
# must not be picked up, whatever LD_LIBRARY_PATH says.
./configure \
    --prefix="$PREFIX" \
    --disable-internal-argon2 --disable-libargon2 \
    --disable-asciidoc --disable-ssh-token --disable-nls \
    --disable-veritysetup --disable-integritysetup \
    --disable-static \
    --with-tmpfilesdir="$PREFIX/lib/tmpfiles.d" \
    LDFLAGS="-Wl,-rpath,$PREFIX/lib -Wl,--disable-new-dtags" >&2
make -j"$(nproc)" >&2

# Install into a staging root, check it, then move it into place in one rename.
stage="$work/stage"
make install DESTDIR="$stage" >&2
built="$stage$PREFIX/sbin/cryptsetup"
if LD_LIBRARY_PATH="$stage$PREFIX/lib" ldd "$built" | grep -qi argon2; then
    log "refusing the build: it links an argon2 library"
    exit 1
fi
rm -rf "$PREFIX.new"
mv "$stage$PREFIX" "$PREFIX.new"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"

# Prove it behaves like COS: argon2 refused, pbkdf2 works, and it uses its own library.
readelf -d "$PREFIX/sbin/cryptsetup" | grep -q "RPATH.*$PREFIX/lib" \
    || { log "the binary does not carry an RPATH to $PREFIX/lib"; exit 1; }
header="$work/header.img"
truncate -s 32M "$header"
if printf 'probe' | "$PREFIX/sbin/cryptsetup" luksFormat --batch-mode --type luks2 \
        --pbkdf argon2id --key-file=- "$header" >/dev/null 2>&1; then
    log "the build formats with argon2id; it is not a COS-like build"
    exit 1
fi
printf 'probe' | "$PREFIX/sbin/cryptsetup" luksFormat --batch-mode --type luks2 \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file=- "$header" >&2

echo "$version" >"$STAMP"
log "built into $PREFIX: $("$PREFIX/sbin/cryptsetup" --version)"
