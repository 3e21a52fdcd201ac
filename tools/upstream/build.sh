#!/usr/bin/env bash
# Build the Gateway API conformance suite (a `go test -c` binary) and its
# echo-basic backend from the Go module proxy, into a versioned cache dir.
#
#   tools/upstream/build.sh            build if needed, print the cache dir
#   tools/upstream/build.sh --print    print the cache dir, build nothing
#   tools/upstream/build.sh --check    exit 0 iff everything is already there
#   tools/upstream/build.sh --tidy     refresh go.sum here (maintainers)
#
# Cache dir: ${MTLS_APISERVER_CACHE:-~/.cache/mtls-conformance}/upstream-<version>/
#   bin/conformance.test   the suite (flags: -gateway-class, -supported-features, ...)
#   bin/echo-basic         the suite's backend (ports 3000 HTTP, 8443 TLS, 9000 gRPC)
#   bin/tests.txt          every test's ShortName (run.py skips all but the TLS tests)
#   crds/{standard,experimental}/*.yaml, crds/VERSION
#                          the suite's own CRDs (sigs.k8s.io/gateway-api@<version>):
#                          the suite refuses to run against CRDs of another bundle
#                          version unless --allow-crds-mismatch
#
# Why a staging dir: sigs.k8s.io/gateway-api/conformance v1.7.0 imports
# echo-basic's packages (grpcechoserver, tcpserver, udpechoserver) from
# sigs.k8s.io/gateway-api-conformance-images v0.2.0, which the Go module proxy
# refuses (403). Up to v1.6.3 the same packages shipped inside the conformance
# module itself (conformance/echo-basic); their sources are identical to the
# images repository's apart from the import path (checked 2026-12-01, see
# README.md). So the build assembles that module from conformance@$ECHO_FROM
# with the import paths rewritten, and points a `replace` at it. The same
# staging copy builds the echo-basic binary.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-build}"
ECHO_FROM=v1.6.3   # the last conformance module that contained echo-basic
export GOTOOLCHAIN="${GOTOOLCHAIN_UPSTREAM:-go1.27.3}"

log() { printf '[upstream-build] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "Go is not installed (no 'go' on PATH). Install Go >= 1.25 and re-run: bash tools/upstream/build.sh"
    exit 127
fi

cd "$HERE"
VERSION="$(grep -oE 'sigs\.k8s\.io/gateway-api/conformance v[^ ]+' go.mod | head -1 | cut -d' ' -f2)"
[[ -n "$VERSION" ]] || { log "go.mod here does not require sigs.k8s.io/gateway-api/conformance"; exit 1; }
CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/upstream-$VERSION"
BIN="$OUT/bin"

complete() { [[ -x "$BIN/conformance.test" && -x "$BIN/echo-basic" && -s "$BIN/tests.txt" && -f "$OUT/crds/VERSION" ]]; }

stage() { # dir: go.mod/go.sum of this directory plus the images module
    local dir="$1" src
    rm -rf "$dir"; mkdir -p "$dir/images"
    src="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= go mod download -json "sigs.k8s.io/gateway-api/conformance@$ECHO_FROM" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -d "$src/echo-basic/grpcechoserver" ]] || { log "no echo-basic in conformance@$ECHO_FROM"; exit 1; }
    cp -r "$src/echo-basic" "$dir/images/echo-basic"
    chmod -R u+w "$dir/images"
    rm -f "$dir/images/echo-basic/.go.mod" "$dir/images/echo-basic/.go.sum" "$dir"/images/echo-basic/*_test.go \
        "$dir"/images/echo-basic/*/*_test.go
    # Rewrite import lines only (the generated protobuf descriptor embeds the
    # old path as length-prefixed bytes and must stay as it is).
    find "$dir/images" -name '*.go' -exec sed -i -E \
        's#^([[:space:]]*([A-Za-z_][A-Za-z0-9_]*[[:space:]]+)?")sigs\.k8s\.io/gateway-api/conformance/echo-basic#\1sigs.k8s.io/gateway-api-conformance-images/echo-basic#' {} +
    printf 'module sigs.k8s.io/gateway-api-conformance-images\n\ngo 1.26\n' >"$dir/images/go.mod"
    cp "$HERE/go.mod" "$dir/go.mod"
    [[ -f "$HERE/go.sum" ]] && cp "$HERE/go.sum" "$dir/go.sum"
    # An echo-basic main inside the main module, so that `go build` needs no
    # go.mod of the images module's own.
    mkdir -p "$dir/cmd/echo-basic"
    cp "$dir/images/echo-basic/echo-basic.go" "$dir/cmd/echo-basic/main.go"
    # Keeps the suite's packages in go.mod/go.sum under `go mod tidy`.
    printf '//go:build tools\n\npackage pin\n\nimport _ "sigs.k8s.io/gateway-api/conformance"\n' >"$dir/pin.go"
}

case "$MODE" in
    --print) echo "$OUT"; exit 0 ;;
    --check) complete || exit 1; echo "$OUT"; exit 0 ;;
    --tidy)
        T="$(mktemp -d)"; stage "$T"
        (cd "$T" && GOFLAGS=-mod=mod go mod tidy)
        cp "$T/go.mod" "$HERE/go.mod"; cp "$T/go.sum" "$HERE/go.sum"; rm -rf "$T"
        log "go.mod/go.sum refreshed"; exit 0 ;;
    build|--build) ;;
    *) log "unknown argument: $MODE"; exit 2 ;;
esac

if complete; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if ! flock -n 9; then log "another build holds $OUT/.lock; waiting for it"; flock 9; fi
if complete; then echo "$OUT"; exit 0; fi

NICE="${BUILD_NICE:-10}"
T0=$(date +%s)
stage "$OUT/src"
mkdir -p "$BIN"
cd "$OUT/src"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
log "building conformance.test (sigs.k8s.io/gateway-api/conformance@$VERSION) ..."
[[ -x "$BIN/conformance.test" ]] || nice -n "$NICE" go test -c -trimpath -o "$BIN/.conformance.test.tmp" sigs.k8s.io/gateway-api/conformance
[[ -x "$BIN/conformance.test" ]] || mv -f "$BIN/.conformance.test.tmp" "$BIN/conformance.test"
log "building echo-basic (from conformance@$ECHO_FROM) ..."
if ! [[ -x "$BIN/echo-basic" ]]; then
    nice -n "$NICE" go build -trimpath -ldflags "-s -w" -o "$BIN/.echo-basic.tmp" ./cmd/echo-basic
    mv -f "$BIN/.echo-basic.tmp" "$BIN/echo-basic"
fi
CONF="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= go mod download -json "sigs.k8s.io/gateway-api/conformance@$VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
grep -h 'ShortName:' "$CONF"/tests/*.go | sed -n 's/.*ShortName:[[:space:]]*"\([^"]*\)".*/\1/p' | sort -u >"$BIN/.tests.txt"
[[ -s "$BIN/.tests.txt" ]] || { log "found no tests in $CONF/tests"; exit 1; }
mv -f "$BIN/.tests.txt" "$BIN/tests.txt"
if ! [[ -f "$OUT/crds/VERSION" ]]; then
    GWDIR="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= go mod download -json "sigs.k8s.io/gateway-api@$VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -d "$GWDIR/config/crd/standard" ]] || { log "could not download sigs.k8s.io/gateway-api@$VERSION"; exit 1; }
    rm -rf "$OUT/.crds.tmp"; mkdir -p "$OUT/.crds.tmp/standard" "$OUT/.crds.tmp/experimental"
    cp "$GWDIR"/config/crd/standard/*.yaml "$OUT/.crds.tmp/standard/"
    cp "$GWDIR"/config/crd/experimental/*.yaml "$OUT/.crds.tmp/experimental/"
    rm -f "$OUT"/.crds.tmp/*/kustomization.yaml; chmod -R u+w "$OUT/.crds.tmp"
    echo "$VERSION" >"$OUT/.crds.tmp/VERSION"
    rm -rf "$OUT/crds"; mv "$OUT/.crds.tmp" "$OUT/crds"
fi
log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
