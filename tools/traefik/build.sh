#!/usr/bin/env bash
# Build Traefik (github.com/traefik/traefik/v3) from the Go module proxy into a cache dir.
#
#   tools/traefik/build.sh            build if needed, print the cache dir
#   tools/traefik/build.sh --check    exit 0 iff it is already built
#
# Cache dir: ${MTLS_APISERVER_CACHE:-~/.cache/mtls-conformance}/traefik-<version>/bin/traefik
# v3.6.12 is the newest release that builds from the proxy (v3.7.x's go.mod replaces a
# nested module its zip lacks, and some of its dependencies are refused by the proxy:
# ../shared/reference/containers-here.md). Its Gateway API provider uses
# sigs.k8s.io/gateway-api v1.4.0 (BackendTLSPolicy v1).
set -euo pipefail
VERSION="${TRAEFIK_VERSION:-v3.6.12}"
MODE="${1:-build}"
log() { printf '[traefik-build] %s\n' "$*" >&2; }
command -v go >/dev/null || { log "Go is not installed; install Go >= 1.25 and re-run: bash tools/traefik/build.sh"; exit 127; }
CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/traefik-$VERSION"
case "$MODE" in
    --check) [[ -x "$OUT/bin/traefik" ]] || exit 1; echo "$OUT"; exit 0 ;;
    build|--build) ;;
    *) log "unknown argument: $MODE"; exit 2 ;;
esac
if [[ -x "$OUT/bin/traefik" ]]; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT/bin"
exec 9>"$OUT/.lock"
flock -n 9 || { log "another build holds $OUT/.lock; waiting for it"; flock 9; }
if [[ -x "$OUT/bin/traefik" ]]; then echo "$OUT"; exit 0; fi
T0=$(date +%s)
SRC="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= go mod download -json "github.com/traefik/traefik/v3@$VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -d "$SRC/cmd/traefik" ]] || { log "could not download github.com/traefik/traefik/v3@$VERSION"; exit 1; }
rm -rf "$OUT/src"; cp -r "$SRC" "$OUT/src"; chmod -R u+w "$OUT/src"
cd "$OUT/src"
log "building traefik $VERSION (about 7 minutes cold on 2 cores) ..."
CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" nice -n "${BUILD_NICE:-10}" go build -trimpath \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$VERSION" -o "$OUT/bin/.traefik.tmp" ./cmd/traefik
mv -f "$OUT/bin/.traefik.tmp" "$OUT/bin/traefik"
rm -rf "$OUT/src"
log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
