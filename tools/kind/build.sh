#!/usr/bin/env bash
# Build the two Go tools that check the kind flow and the nightly workflow here, where
# there is no Docker: kind (its own config loader validates kind-config.yaml) and
# actionlint (lints .github/workflows). Both from the Go module proxy, into a cache
# directory keyed by their versions; idempotent, and the last stdout line is the bin dir.
#
#   tools/kind/build.sh           build if needed, print the bin dir
#   tools/kind/build.sh --print   print the bin dir, build nothing
set -euo pipefail

KIND_VERSION="v0.33.0"
ACTIONLINT_VERSION="v1.7.12"

log() { printf '[kind-tools-build] %s\n' "$*" >&2; }
if ! command -v go >/dev/null 2>&1; then
    log "Go is not installed (no 'go' on PATH). Install Go and re-run: bash tools/kind/build.sh"
    exit 127
fi
CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
BIN="$CACHE_ROOT/kind-$KIND_VERSION-actionlint-$ACTIONLINT_VERSION/bin"
if [[ "${1:-}" == --print ]]; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN"
exec 9>"$BIN/.lock"
flock 9
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$BIN"
if [[ ! -x "$BIN/kind" ]]; then
    log "building sigs.k8s.io/kind@$KIND_VERSION"
    nice -n "${BUILD_NICE:-10}" go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
if [[ ! -x "$BIN/mtls-validate-config" ]]; then
    log "building mtls-validate-config inside a copy of sigs.k8s.io/kind@$KIND_VERSION (its config loader is internal to its pkg/ tree)"
    src="$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    cp -r "$src/." "$work/"
    chmod -R u+w "$work"
    mkdir -p "$work/pkg/mtls-validate-config"
    cp "$(dirname "${BASH_SOURCE[0]}")/validate_config.go" "$work/pkg/mtls-validate-config/main.go"
    sed -i '/^\/\/go:build ignore$/d' "$work/pkg/mtls-validate-config/main.go"
    (cd "$work" && nice -n "${BUILD_NICE:-10}" go build -mod=readonly -o "$BIN/mtls-validate-config" ./pkg/mtls-validate-config)
fi
if [[ ! -x "$BIN/actionlint" ]]; then
    log "building github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
    nice -n "${BUILD_NICE:-10}" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
echo "$BIN"
