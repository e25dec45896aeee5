#!/usr/bin/env bash
# Containerize a Bento from the local BentoML store into an OCI image.
#
#     scripts/container/build.sh [BENTO_TAG] [IMAGE]
#
# BENTO_TAG defaults to iris_classifier:latest (run `make train` and `make build` first),
# IMAGE to iris-classifier:latest. With a running Docker engine (`docker info` succeeds)
# this is plain `bentoml containerize` with the docker backend. Without one, it builds
# with buildah against the project-local configuration (env.sh), after making sure the
# stand-in base image exists (base-image.sh); run the result with podman.
#
# Environment: CONTAINER_BACKEND=docker|buildah forces a backend; BENTOML is the bentoml
# command (default: .venv/bin/bentoml when present); BUILDAH_FORMAT=docker keeps
# Docker-only metadata such as HEALTHCHECK (buildah's default format, OCI, drops it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bento="${1:-iris_classifier:latest}"
image="${2:-iris-classifier:latest}"

if [ -z "${BENTOML:-}" ]; then
    if [ -x "$root/.venv/bin/bentoml" ]; then BENTOML="$root/.venv/bin/bentoml"; else BENTOML=bentoml; fi
fi

backend="${CONTAINER_BACKEND:-}"
if [ -z "$backend" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        backend=docker
    else
        backend=buildah
    fi
fi

echo "build: $bento -> $image (backend: $backend)" >&2
start=$SECONDS
case "$backend" in
docker)
    "$BENTOML" containerize "$bento" --backend docker -t "$image"
    ;;
buildah)
    "$here/base-image.sh"
    # shellcheck source-path=SCRIPTDIR source=env.sh
    . "$here/env.sh"
    # network=host: build steps reach the package mirrors without a CNI network setup.
    "$BENTOML" containerize "$bento" --backend buildah --opt network=host -t "$image"
    ;;
*)
    echo "build: unknown CONTAINER_BACKEND '$backend' (docker or buildah)" >&2
    exit 2
    ;;
esac
echo "build: $image built in $((SECONDS - start)) s" >&2
