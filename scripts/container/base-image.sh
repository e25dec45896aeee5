#!/usr/bin/env bash
# Build a local stand-in for docker.io/library/python:3.11-slim, the base image of
# BentoML's generated Dockerfile, for machines that cannot reach a container registry.
#
# Debian 12 (bookworm) ships Python 3.11, the same minor version as python:3.11-slim.
# The image trusts the host's extra CA certificates (package downloads go through a
# TLS-inspecting proxy) and carries a uv binary taken from the `uv` wheel on PyPI
# (without one, the generated Dockerfile runs `pip install uv`, which Debian refuses).
#
# Idempotent: does nothing when the image is already in local storage with the same
# recipe (or when it is a real python:3.11-slim, e.g. pulled from Docker Hub).
# Cached: the finished root filesystem is kept as a tarball in $CONTAINER_STATE_DIR/cache,
# so rebuilding the image after a storage reset is an import of a few seconds.
#
# Environment: CONTAINER_BASE_UV_VERSION (uv wheel version), CONTAINER_BASE_MIRROR (Debian
# mirror), CONTAINER_BASE_FORCE=1 (rebuild even when present), PYTHON (an interpreter with
# pip, used to fetch the uv wheel). Not IRIS_*: that prefix belongs to the app's settings.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$here/env.sh"

image="docker.io/library/python:3.11-slim"
suite="bookworm"
uv_version="${CONTAINER_BASE_UV_VERSION:-0.13.9}"
mirror="${CONTAINER_BASE_MIRROR:-http://deb.debian.org/debian}"
python="${PYTHON:-python3}"
cache="$CONTAINER_STATE_DIR/cache"
label="org.iris-classifier.base-recipe"

log() { echo "base-image: $*" >&2; }

# Everything that changes the image's content goes into its key.
shopt -s nullglob
host_certs=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
recipe_key="$(
    {
        cat "${BASH_SOURCE[0]}"
        echo "$uv_version $mirror $(uname -m)"
        [ "${#host_certs[@]}" -eq 0 ] || cat "${host_certs[@]}"
    } | sha256sum | cut -c1-16
)"

# One build at a time per storage (parallel test workers may all ask for the image).
exec 9>"$CONTAINER_STATE_DIR/base-image.lock"
flock 9

if [ "${CONTAINER_BASE_FORCE:-0}" != 1 ] && podman image exists "$image"; then
    current="$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$image")"
    if [ "$current" = "$recipe_key" ]; then
        log "$image is up to date (recipe $recipe_key)"
        exit 0
    elif [ -z "$current" ] || [ "$current" = "<no value>" ]; then
        log "$image exists and was not built here; leaving it alone"
        exit 0
    fi
    log "$image was built from another recipe ($current); rebuilding"
fi

mkdir -p "$cache/debs"
tarball="$cache/base-rootfs-$recipe_key.tar"

fetch_uv() {  # $1: rootfs. Extract uv from its manylinux wheel (no unzip needed).
    local wheels="$cache/wheels" platform
    case "$(uname -m)" in
    x86_64) platform=manylinux2014_x86_64 ;;
    aarch64) platform=manylinux2014_aarch64 ;;
    *) log "unsupported architecture $(uname -m)" && return 1 ;;
    esac
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "$platform" --dest "$wheels" "uv==$uv_version"
    "$python" - "$wheels" "$uv_version" "$1/usr/local/bin/uv" <<'PY'
import glob, os, shutil, sys, zipfile

wheels, version, target = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(wheels, f"uv-{version}-*.whl"))
with zipfile.ZipFile(wheel) as zf, zf.open(f"uv-{version}.data/scripts/uv") as src:
    with open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(target, 0o755)
PY
}

make_rootfs() {  # $1: empty folder
    local rootfs="$1"
    log "debootstrap $suite (minbase + python3) from $mirror"
    debootstrap --variant=minbase --cache-dir="$cache/debs" \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2 && return 1; }

    # Updates and security fixes, as in the real python:3.11-slim.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
EOF
    if [ "${#host_certs[@]}" -gt 0 ]; then
        cp "${host_certs[@]}" "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    fetch_uv "$rootfs"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
}

if [ ! -f "$tarball" ]; then
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    make_rootfs "$rootfs"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
    # Only the current recipe's tarball is worth keeping.
    find "$cache" -maxdepth 1 -name 'base-rootfs-*.tar' ! -name "${tarball##*/}" -delete
else
    log "using cached root filesystem ${tarball##*/}"
fi

previous="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
podman import --quiet \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV UV_NATIVE_TLS=1" \
    --change "LABEL $label=$recipe_key" \
    --change 'CMD ["python3"]' \
    "$tarball" "$image" >/dev/null
# The previous stand-in is now untagged; drop it unless an image still builds on it.
current_id="$(podman image inspect --format '{{.Id}}' "$image")"
if [ -n "$previous" ] && [ "$previous" != "$current_id" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
log "imported $image (recipe $recipe_key)"
