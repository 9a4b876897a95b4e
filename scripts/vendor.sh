#!/usr/bin/env bash
# Refresh the vendored front-end libraries in src/tokenbank/web/static/vendor/ from the npm
# registry. The pages load them from the app itself (no CDN), so the files are committed;
# this script is only for upgrading them. Versions are pinned here, and npm checks each
# tarball against the registry's integrity hash.
set -euo pipefail
HTMX=2.0.11
ALPINE_CSP=3.17.4

dest="$(cd "$(dirname "$0")/.." && pwd)/src/tokenbank/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@$HTMX" "@alpinejs/csp@$ALPINE_CSP" >/dev/null
mkdir htmx alpine
tar xzf "htmx.org-$HTMX.tgz" -C htmx
tar xzf "alpinejs-csp-$ALPINE_CSP.tgz" -C alpine
mkdir -p "$dest"
cp htmx/package/dist/htmx.min.js "$dest/htmx.min.js"
# Alpine's CSP build: no eval, so the pages' Content-Security-Policy can stay 'self'.
cp alpine/package/dist/cdn.min.js "$dest/alpine-csp.min.js"
cat >"$dest/VERSIONS" <<TXT
htmx.org $HTMX (BSD Zero Clause License, https://htmx.org)
@alpinejs/csp $ALPINE_CSP (MIT License, https://alpinejs.dev)
TXT
echo "vendored htmx $HTMX and @alpinejs/csp $ALPINE_CSP into $dest"
