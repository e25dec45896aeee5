#!/usr/bin/env bash
# Install what builds and runs the OCI image on a machine without a Docker engine.
# Debian/Ubuntu only; needs root (or sudo). Safe to run again: apt skips what is there.
set -euo pipefail

# catatonit: the pause process of the pods `podman kube play` creates (tests/deploy).
packages=(buildah podman runc debootstrap uidmap fuse-overlayfs slirp4netns catatonit)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "container toolchain: already installed"
    exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "container toolchain: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
