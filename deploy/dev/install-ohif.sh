#!/usr/bin/env bash
# Fetch the OHIF viewer's prebuilt static app (@ohif/app on the npm registry, pinned and checked against its
# published sha512) into .cache/ohif/dist, for the browser test of /dicomweb. A no-op when it is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=3.13.2
INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
DEST=.cache/ohif
STAMP="$DEST/dist/.version"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" ]]; then
    echo "install-ohif: @ohif/app $VERSION already in $DEST/dist"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-ohif: npm is needed to fetch @ohif/app (Node.js from Debian or nodejs.org)" >&2
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@ohif/app@$VERSION" >/dev/null 2>&1)
tarball="$work/ohif-app-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$actual" != "$INTEGRITY" ]]; then
    echo "install-ohif: @ohif/app $VERSION does not match its pinned integrity ($actual)" >&2
    exit 1
fi
tar xzf "$tarball" -C "$work"
rm -rf "$DEST/dist"
mkdir -p "$DEST"
mv "$work/package/dist" "$DEST/dist"
echo "$VERSION" > "$STAMP"
echo "install-ohif: @ohif/app $VERSION in $DEST/dist"
