# shellcheck shell=bash
# Source this file to point buildah and podman at the project's own configuration:
#     . scripts/container/env.sh
# Nothing under /etc is changed. Container storage lives in $CONTAINER_STATE_DIR
# (default: .containers/ at the repository root, ignored by git).

_iris_ct_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_iris_ct_root="$(cd "$_iris_ct_here/../.." && pwd)"

export CONTAINER_STATE_DIR="${CONTAINER_STATE_DIR:-$_iris_ct_root/.containers}"
mkdir -p "$CONTAINER_STATE_DIR"
# Re-rendered on every source, so moving the folder (or the checkout) needs nothing else.
sed "s|@CONTAINER_STATE_DIR@|$CONTAINER_STATE_DIR|g" \
    "$_iris_ct_here/storage.conf.in" >"$CONTAINER_STATE_DIR/storage.conf"

export CONTAINERS_CONF="$_iris_ct_here/containers.conf"
export CONTAINERS_STORAGE_CONF="$CONTAINER_STATE_DIR/storage.conf"
# No user namespaces or nested runtimes needed: build steps run in a chroot.
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
# Keep intermediate layers so a rebuild with unchanged requirements skips the pip layer.
export BUILDAH_LAYERS="${BUILDAH_LAYERS:-true}"

unset _iris_ct_here _iris_ct_root
