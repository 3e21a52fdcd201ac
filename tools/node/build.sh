#!/usr/bin/env bash
# Build kubelet, kube-controller-manager, kube-scheduler and kube-proxy from the Go
# module proxy into a versioned cache dir beside tools/apiserver's (same Kubernetes
# version: both go.mod files pin k8s.io/kubernetes, and this script refuses a mismatch).
#
#   tools/node/build.sh            build if needed, print the cache dir
#   tools/node/build.sh --print    print the cache dir, build nothing
#   tools/node/build.sh --check    exit 0 iff everything is already there
#
# Idempotent and safe to run concurrently (flock on the cache dir). The last line
# on stdout is the cache dir; progress goes to stderr.
#
# Environment:
#   MTLS_APISERVER_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance)
#   BUILD_NICE             nice level for the Go build (default 10; the build cache is shared)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-build}"
log() { printf '[node-build] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "Go is not installed (no 'go' on PATH). Install Go >= 1.25 and re-run: bash tools/node/build.sh"
    exit 127
fi

pinned() { sed -n "s#^[[:space:]]*$1[[:space:]]\{1,\}\(v[^[:space:]]*\).*#\1#p" "$2" | head -1; }
K8S_VERSION="$(pinned 'k8s\.io/kubernetes' "$HERE/go.mod")"
API_VERSION="$(pinned 'k8s\.io/kubernetes' "$HERE/../apiserver/go.mod")"
if [[ "$K8S_VERSION" != "$API_VERSION" ]]; then
    log "tools/node/go.mod pins k8s.io/kubernetes $K8S_VERSION but tools/apiserver/go.mod pins $API_VERSION; pin the same version in both"
    exit 2
fi

CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/node-${K8S_VERSION}"
BIN="$OUT/bin"
want_bins=(kubelet kube-controller-manager kube-scheduler kube-proxy)

complete() {
    local b
    for b in "${want_bins[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

case "$MODE" in
    --print) echo "$OUT"; exit 0 ;;
    --check) complete; echo "$OUT"; exit 0 ;;
    build|--build) ;;
    *) log "unknown argument: $MODE"; exit 2 ;;
esac

if complete; then echo "$OUT"; exit 0; fi
mkdir -p "$BIN"
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    log "another build holds $OUT/.lock; waiting for it"
    flock 9
fi
if complete; then echo "$OUT"; exit 0; fi

cd "$HERE"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
NICE="${BUILD_NICE:-10}"
KMINOR="${K8S_VERSION#v1.}"; KMINOR="${KMINOR%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KMINOR"
    LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done

T0=$(date +%s)
for name in "${want_bins[@]}"; do
    [[ -x "$BIN/$name" ]] && continue
    t0=$(date +%s)
    log "building $name ..."
    nice -n "$NICE" go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/.$name.tmp" "k8s.io/kubernetes/cmd/$name"
    mv -f "$BIN/.$name.tmp" "$BIN/$name"
    log "built $name in $(( $(date +%s) - t0 ))s"
done
log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
