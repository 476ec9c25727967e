#!/usr/bin/env bash
# Build the gateway's container image with podman (no Docker engine needed): `make image` runs this.
#
#   deploy/container/build.sh [TAG]        (default: localhost/dicom-gateway:dev)
#
# The base image, by IMAGE_BASE:
#   auto      (default) the Dockerfile's own base (python:3.11-slim-bookworm), pulled again at each build when a
#             registry answers for it, else a Debian base made from Debian's packages (below);
#   registry  the Dockerfile's own base; fail if it cannot be pulled;
#   debian    always the Debian base;
#   any other value: that image reference, passed as PYTHON_IMAGE.
# The Debian base is mmdebstrap's minbase of bookworm with Python 3.11, its venv module and the CA certificates.
# Its tag carries the hash of what made it (suite, packages, options) and of the month, so that it is built once a
# month on a machine (security updates come in then) and again whenever that list changes.
#
# Settings, for machines that need them (environment variables):
#   IMAGE_RUNTIME  the OCI runtime podman uses (default runc: crun's rlimit calls are refused inside some VMs)
#   IMAGE_CA_FILE  a CA bundle mounted read-only at the system bundle's path during the build, for a package index
#                  behind a TLS-intercepting proxy (default: the host's /etc/ssl/certs/ca-certificates.crt when
#                  present; empty for none). The shipped image keeps its base's bundle (tests/image/ checks it).
#   IMAGE_BUILD_NETWORK  the build's network (default host: the steps that install the locked wheels reach the
#                  package index as the host does)
#   IMAGE_BUILD_OPTIONS  more `podman build` options, split on spaces (e.g. a pip.conf mounted for a mirror:
#                  `--volume /etc/pip.conf:/etc/pip.conf:ro`); no committed file names a package index
#   IMAGE_DEBIAN_MIRROR  the Debian mirror mmdebstrap installs from (default: mmdebstrap's, deb.debian.org)
# podman and mmdebstrap run as root here (rootless podman would need subordinate ids and uidmap).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too
cd "$(dirname "$0")/../.."

TAG="${1:-localhost/dicom-gateway:dev}"
IMAGE_BASE="${IMAGE_BASE:-auto}"
IMAGE_RUNTIME="${IMAGE_RUNTIME:-runc}"
IMAGE_CA_FILE="${IMAGE_CA_FILE-/etc/ssl/certs/ca-certificates.crt}"
IMAGE_BUILD_NETWORK="${IMAGE_BUILD_NETWORK:-host}"
IMAGE_DEBIAN_MIRROR="${IMAGE_DEBIAN_MIRROR:-}"
DEBIAN_SUITE=bookworm
DEBIAN_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# Documentation, manuals and translations are left out of the base; the copyright files stay. The merged-usr hook
# makes bookworm's merged /usr itself, where the usrmerge package would bring all of perl (49 MB) into the base.
DEBIAN_OPTIONS=(--variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    "--dpkgopt=path-exclude=/usr/share/doc/*" "--dpkgopt=path-include=/usr/share/doc/*/copyright"
    "--dpkgopt=path-exclude=/usr/share/man/*" "--dpkgopt=path-exclude=/usr/share/info/*"
    "--dpkgopt=path-exclude=/usr/share/locale/*")

log() { echo "image: $*" >&2; }
podman_() { podman --runtime "$IMAGE_RUNTIME" "$@"; }
# `podman run` options for this machine, as tests/support/container.py has them (IMAGE_RUN_OPTIONS).
read -r -a RUN_OPTIONS <<< "${IMAGE_RUN_OPTIONS:---ulimit nofile=16384:16384 --ulimit nproc=4096:4096}"

# The Dockerfile's default base, read from the Dockerfile so that there is one place that names it.
default_base() {
    sed -n 's/^ARG PYTHON_IMAGE=\(.*\)$/\1/p' deploy/container/Dockerfile
}

debian_base() {
    local digest tag tar
    digest="$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" "${DEBIAN_OPTIONS[@]}" "$(date -u +%Y-%m)" \
        | sha256sum | cut -c1-12)"
    tag="localhost/dicom-gateway-base:${DEBIAN_SUITE}-${digest}"
    if podman_ image exists "$tag"; then
        log "Debian base $tag already built"
    else
        tar="$(mktemp --suffix=.tar)"
        trap 'rm -f "$tar"; podman_ rmi --force "$tag.partial" >/dev/null 2>&1 || true' RETURN
        log "building the Debian base $tag with mmdebstrap ($DEBIAN_PACKAGES)"
        mmdebstrap --quiet "${DEBIAN_OPTIONS[@]}" --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$tar" \
            ${IMAGE_DEBIAN_MIRROR:+"$IMAGE_DEBIAN_MIRROR"} >/dev/null
        [[ -s "$tar" ]] || { log "mmdebstrap made an empty base"; return 1; }
        # Tagged only once it runs the Python the Dockerfile needs: a broken base is never cached.
        podman_ import --quiet "$tar" "$tag.partial" >/dev/null
        podman_ run --rm --no-healthcheck "${RUN_OPTIONS[@]}" --network none --entrypoint python "$tag.partial" \
            -c "import ssl, venv, sys; assert sys.version_info[:2] == (3, 11)" >&2
        podman_ tag "$tag.partial" "$tag"
    fi
    echo "$tag"
}

pulled() {
    if timeout 300 podman_ pull --quiet "$1" >/dev/null 2>&1; then
        return 0
    fi
    podman_ image exists "$1" && log "cannot pull $1 again: using the copy pulled before"
}

case "$IMAGE_BASE" in
    auto)
        base="$(default_base)"
        if pulled "$base"; then
            log "base $base (from its registry)"
        else
            log "no registry answers for $base: using a Debian base made from Debian's packages"
            base="$(debian_base)"
        fi ;;
    registry)
        base="$(default_base)"
        pulled "$base" || { log "cannot pull $base"; exit 1; } ;;
    debian) base="$(debian_base)" ;;
    *) base="$IMAGE_BASE" ;;
esac

read -r -a build_args <<< "${IMAGE_BUILD_OPTIONS:-}"
build_args+=(--network "$IMAGE_BUILD_NETWORK" --build-arg "PYTHON_IMAGE=$base")
if [[ -n "$IMAGE_CA_FILE" ]]; then
    [[ -r "$IMAGE_CA_FILE" ]] || { log "IMAGE_CA_FILE=$IMAGE_CA_FILE cannot be read"; exit 1; }
    build_args+=(--volume "$IMAGE_CA_FILE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
# --format docker keeps the HEALTHCHECK in the image's configuration (the OCI format has no field for it).
# --ignorefile: the allow-list next to the Dockerfile, as BuildKit reads it.
started=$(date +%s)
podman_ build --quiet --format docker --layers "${build_args[@]}" \
    --ignorefile deploy/container/Dockerfile.dockerignore \
    -f deploy/container/Dockerfile -t "$TAG" . >/dev/null
size=$(podman_ image inspect --format '{{.Size}}' "$TAG")
log "built $TAG from $base in $(( $(date +%s) - started )) s: $(( size / 1024 / 1024 )) MiB"
