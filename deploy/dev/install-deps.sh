#!/usr/bin/env bash
# Idempotently install the Debian packages needed for the tests and `make run`; with `image`, only those that
# build and run the container image (`make image`). Fast no-op when everything is installed.
#
#   install-deps.sh [image]
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb orthanc-gdcm postgresql curl chromium rsyslog rsyslog-gnutls libxml2-utils nginx wrk)
# podman with runc as its runtime (deploy/container/build.sh says why not crun); mmdebstrap for the Debian base.
if [[ "${1:-}" == image ]]; then
    PACKAGES=(podman runc mmdebstrap)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all packages already installed (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: missing ${missing[*]} and not root (no sudo available)" >&2
        exit 1
    fi
fi

"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: installed ${missing[*]}"
