#!/usr/bin/env bash
# Build the images the one-node tier runs, with no registry, and save each as a
# docker-archive tarball that `ctr images import` (what `kind load` does) loads:
#
#   pause        the pod sandbox image: a static C program, FROM scratch
#   refgateway   deploy/refgateway/Containerfile          -> refgateway:dev
#   mtls-echo    deploy/echo/Containerfile                -> mtls-echo:dev
#   echo-basic   upstream's backend (Go), FROM scratch    -> localhost/echo-basic:<gateway-api version>
#   nginx        Debian's nginx, for --nginx-image        -> localhost/mtls-nginx:bookworm
#
# The Python images use the same Containerfiles a user builds from python:3.11-slim,
# with the base swapped for a Debian bookworm made with debootstrap and the Python
# dependencies installed from wheels built here (`pip wheel`).
#
#   tools/images/build.sh            build what is missing; print the cache dir
#   tools/images/build.sh --print    print the cache dir only
#
# Every product is cached under $CACHE/images keyed by the hash of its inputs, so a
# second run with nothing changed builds nothing. The last line on stdout is the
# cache dir, which then holds one <name>.tar per image (symlinks to the keyed files)
# and images.txt (name, image reference, tarball per line). Progress goes to stderr.
#
# Environment: MTLS_APISERVER_CACHE (cache root), PYTHON (default python3, the
# interpreter whose pip builds the wheels: it must be CPython 3.11 like the base),
# DEBIAN_MIRROR (default: the first deb.debian.org-like URI in apt's sources),
# BUILD_NICE (default 10).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
MODE="${1:-build}"
log() { printf '[images-build] %s\n' "$*" >&2; }

CACHE_ROOT="${MTLS_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-conformance}"
OUT="$CACHE_ROOT/images"
[[ "$MODE" == --print ]] && { echo "$OUT"; exit 0; }

for tool in podman debootstrap gcc go; do
    command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install podman buildah debootstrap gcc libc6-dev golang"; exit 127; }
done
export CONTAINERS_CONF="$HERE/containers.conf"
NICE="${BUILD_NICE:-10}"
PYTHON="${PYTHON:-python3}"
SUITE=bookworm
GATEWAY_API_VERSION="$(sed -n 's#^[[:space:]]*sigs.k8s.io/gateway-api/conformance[[:space:]]\{1,\}\(v[^[:space:]]*\).*#\1#p' "$HERE/echo-basic/go.mod")"
mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    m="$(sed -n 's#^URIs:[[:space:]]*\(http[^[:space:]]*/debian\)/*$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
    [[ -z "$m" ]] && m="$(sed -n 's#^deb[[:space:]]\{1,\}\(http[^[:space:]]*/debian\)/*[[:space:]].*#\1#p' /etc/apt/sources.list 2>/dev/null | head -1)"
    echo "${m:-http://deb.debian.org/debian}"
}
hash_of() { # files/dirs... -> short content hash (names and contents)
    (cd "$REPO" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z \
        | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

mkdir -p "$OUT/keyed"
exec 9>"$OUT/.lock"
flock -n 9 || { log "another build holds $OUT/.lock; waiting for it"; flock 9; }
T0=$(date +%s)

# A Debian rootfs made with debootstrap, imported into podman as an image.
rootfs_image() { # tag packages... ; prints nothing, leaves image $tag in podman
    local tag="$1"; shift
    local pkgs; pkgs="$(IFS=,; echo "$*")"
    local tarball="$OUT/keyed/rootfs-$SUITE-$(echo "$SUITE $pkgs" | sha256sum | cut -c1-12).tar"
    if [[ ! -s "$tarball" ]]; then
        local dir; dir="$(mktemp -d "$OUT/.rootfs.XXXXXX")"
        log "debootstrap $SUITE with $pkgs from $(mirror) ..."
        nice -n "$NICE" debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$dir" "$(mirror)" >"$dir.log" 2>&1 \
            || { log "debootstrap failed:"; tail -20 "$dir.log" >&2; exit 1; }
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir" "$dir.log"
    fi
    podman image exists "$tag" 2>/dev/null || podman import -q "$tarball" "$tag" >/dev/null
}

save() { # name ref key -> keyed tarball, symlink $OUT/name.tar
    local name="$1" ref="$2" key="$3"
    podman save -q --format docker-archive -o "$OUT/keyed/$name-$key.tar.tmp" "$ref"
    mv "$OUT/keyed/$name-$key.tar.tmp" "$OUT/keyed/$name-$key.tar"
}
have() { [[ -s "$OUT/keyed/$1-$2.tar" ]]; }
link() { # name key ref: the current tarball of name; older ones of it go
    local old
    ln -sfn "keyed/$1-$2.tar" "$OUT/$1.tar"
    printf '%s %s %s\n' "$1" "$3" "$OUT/$1.tar" >>"$OUT/.images.txt"
    for old in "$OUT/keyed/$1"-*.tar; do [[ "$old" == "$OUT/keyed/$1-$2.tar" ]] || rm -f "$old"; done
}
: >"$OUT/.images.txt"

# pause
key="$(hash_of tools/images/pause)"
if ! have pause "$key"; then
    log "building pause"
    ctx="$(mktemp -d)"; gcc -static -O2 -o "$ctx/pause" "$HERE/pause/pause.c"; strip "$ctx/pause"
    podman build -q -f "$HERE/pause/Containerfile" -t localhost/mtls-pause:1 "$ctx" >/dev/null
    rm -rf "$ctx"; save pause localhost/mtls-pause:1 "$key"
fi
link pause "$key" localhost/mtls-pause:1

# echo-basic
key="$(hash_of tools/images/echo-basic)"
ref="localhost/echo-basic:$GATEWAY_API_VERSION"
if ! have echo-basic "$key"; then
    log "building echo-basic $GATEWAY_API_VERSION"
    ctx="$(mktemp -d)"
    (cd "$HERE/echo-basic" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" nice -n "$NICE" \
        go build -trimpath -ldflags "-s -w" -o "$ctx/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic)
    podman build -q -f "$HERE/echo-basic/Containerfile" -t "$ref" "$ctx" >/dev/null
    rm -rf "$ctx"; save echo-basic "$ref" "$key"
fi
link echo-basic "$key" "$ref"

# nginx
key="$(echo "$SUITE nginx-light" | sha256sum | cut -c1-16)"
if ! have nginx "$key"; then
    log "building nginx"
    rootfs_image localhost/mtls-nginx:bookworm nginx-light
    save nginx localhost/mtls-nginx:bookworm "$key"
fi
link nginx "$key" localhost/mtls-nginx:bookworm

# The Python images: base + wheels, then the project's Containerfiles.
BASE=localhost/mtls-debian-python:bookworm
base_pkgs=(python3 python3-pip python-is-python3)
wheels_key="$(hash_of pyproject.toml)"
WHEELS="$OUT/keyed/wheels-$wheels_key"
py_key="$(echo "$SUITE ${base_pkgs[*]} $wheels_key" | sha256sum | cut -c1-8)"
python_image() { # name ref containerfile paths...
    local name="$1" ref="$2" cf="$3"; shift 3
    local key; key="$py_key-$(hash_of "$cf" "$@")"
    if ! have "$name" "$key"; then
        rootfs_image "$BASE" "${base_pkgs[@]}"
        if [[ ! -d "$WHEELS" ]]; then
            log "building wheels with $PYTHON -m pip wheel"
            rm -rf "$WHEELS.tmp"
            nice -n "$NICE" "$PYTHON" -m pip wheel -q --wheel-dir "$WHEELS.tmp" "setuptools>=68" wheel \
                $("$PYTHON" -c 'import tomllib,sys; print(" ".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml" | tr -d "'")
            mv "$WHEELS.tmp" "$WHEELS"
        fi
        log "building $name from $cf"
        (cd "$REPO" && nice -n "$NICE" podman build -q -f "$cf" -t "$ref" \
            --build-arg BASE_IMAGE="$BASE" --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheels" \
            --volume "$WHEELS:/wheels:ro" . >/dev/null)
        save "$name" "$ref" "$key"
    fi
    link "$name" "$key" "$ref"
}
python_image refgateway docker.io/library/refgateway:dev deploy/refgateway/Containerfile \
    pyproject.toml README.md testkit/build_backend.py refgateway mtls_conformance
python_image mtls-echo docker.io/library/mtls-echo:dev deploy/echo/Containerfile \
    pyproject.toml README.md testkit/build_backend.py refgateway mtls_conformance

mv "$OUT/.images.txt" "$OUT/images.txt"
log "done in $(( $(date +%s) - T0 ))s: $OUT"
echo "$OUT"
