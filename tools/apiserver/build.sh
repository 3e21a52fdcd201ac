#!/usr/bin/env bash
# Build kube-apiserver, etcd (and kubectl) from the Go module proxy, and fetch
# the Gateway API CRDs, into a versioned cache directory outside the repo.
#
#   tools/apiserver/build.sh            build if needed, print the cache dir
#   tools/apiserver/build.sh --print    print the cache dir, build nothing
#   tools/apiserver/build.sh --check    exit 0 iff everything is already there
#
# Idempotent: when the binaries and CRDs are already in the cache dir it does
# nothing. Safe to run concurrently (flock on the cache dir). The last line
# written to stdout is always the cache dir; progress goes to stderr.
#
# Environment:
#   MTLS_APISERVER_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance)
#   GATEWAY_API_VERSION    sigs.k8s.io/gateway-api version for the CRDs (default below;
#                          tests/cluster/testcluster.py reads the default from this file)
#   CRD_GOTOOLCHAIN        Go toolchain for downloading the CRD module (default below:
#                          sigs.k8s.io/gateway-api v1.7.0 needs go >= 1.27.0)
#   BUILD_KUBECTL=0        skip kubectl (it is only for humans)
#   BUILD_NICE             nice level for the Go build (default 10)
#
# Versions of kube-apiserver and etcd come from go.mod in this directory:
# k8s.io/kubernetes and go.etcd.io/etcd/server/v3 (the etcd release that
# Kubernetes release pins).
set -euo pipefail

GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.7.0}"
CRD_GOTOOLCHAIN="${CRD_GOTOOLCHAIN:-go1.27.3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE="${1:-build}"

log() { printf '[apiserver-build] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "Go is not installed (no 'go' on PATH). Install Go >= 1.25 and re-run: bash tools/apiserver/build.sh"
    exit 127
fi

cd "$HERE"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

modver() { go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$1"; }
K8S_VERSION="$(modver k8s.io/kubernetes)"
ETCD_VERSION="$(modver go.etcd.io/etcd/server/v3)"

CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/apiserver-${K8S_VERSION}-etcd-${ETCD_VERSION}"
BIN="$OUT/bin"
# One folder per Gateway API version: a cache dir built for another version gets this
# version's CRDs added next to the old ones, never reused in their place.
CRDS="$OUT/crds/$GATEWAY_API_VERSION"

want_bins=(kube-apiserver etcd)
if [[ "${BUILD_KUBECTL:-1}" != 0 ]]; then want_bins+=(kubectl); fi

complete() {
    local b
    for b in "${want_bins[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
    [[ -d "$CRDS/standard" && -d "$CRDS/experimental" ]] || return 1
}

case "$MODE" in
    --print) echo "$OUT"; exit 0 ;;
    --check) complete; echo "$OUT"; exit 0 ;;
    build|--build) ;;
    *) log "unknown argument: $MODE"; exit 2 ;;
esac

if complete; then echo "$OUT"; exit 0; fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    log "another build holds $OUT/.lock; waiting for it"
    flock 9
fi
if complete; then echo "$OUT"; exit 0; fi

mkdir -p "$BIN"
NICE="${BUILD_NICE:-10}"
KMINOR="${K8S_VERSION#v1.}"; KMINOR="${KMINOR%%.*}"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KMINOR"
    LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

build_one() { # name package
    local name="$1" pkg="$2" t0
    [[ -x "$BIN/$name" ]] && return 0
    t0=$(date +%s)
    log "building $name ($pkg) ..."
    nice -n "$NICE" go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/.$name.tmp" "$pkg"
    mv -f "$BIN/.$name.tmp" "$BIN/$name"
    log "built $name in $(( $(date +%s) - t0 ))s"
}

T0=$(date +%s)
build_one etcd go.etcd.io/etcd/server/v3
build_one kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
if [[ "${BUILD_KUBECTL:-1}" != 0 ]]; then
    build_one kubectl k8s.io/kubernetes/cmd/kubectl
fi

if ! [[ -d "$CRDS/standard" && -d "$CRDS/experimental" ]]; then
    log "fetching Gateway API CRDs sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
    GWDIR="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= GOTOOLCHAIN="$CRD_GOTOOLCHAIN" \
        go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    if [[ -z "$GWDIR" || ! -d "$GWDIR/config/crd/standard" ]]; then
        log "could not download sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION (with GOTOOLCHAIN=$CRD_GOTOOLCHAIN)"
        exit 1
    fi
    TMP="$OUT/crds/.$GATEWAY_API_VERSION.tmp"
    rm -rf "$TMP"
    mkdir -p "$TMP/standard" "$TMP/experimental"
    cp "$GWDIR"/config/crd/standard/*.yaml "$TMP/standard/"
    cp "$GWDIR"/config/crd/experimental/*.yaml "$TMP/experimental/"
    rm -f "$TMP"/*/kustomization.yaml
    chmod -R u+w "$TMP"
    rm -rf "$CRDS"
    mv "$TMP" "$CRDS"
fi

log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
