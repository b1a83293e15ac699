#!/usr/bin/env bash
# Builds the connected-registry container images (the IoT Edge module's images) FROM scratch:
#   connected-registry:0.1.0-amd64    the shipped build (`--profile ship`) with exactly the libraries ldd lists
#   connected-registry:0.1.0-arm64v8  a static aarch64 binary from scripts/cross-arm64.sh
# Both run as uid/gid 1000 with /var/acr/data owned by it, listen on 8080.
#
# Usage: scripts/build-images.sh [amd64|arm64|all]     (default: all)
# Env:   AMD64_BINARY=PATH  use this x86_64 binary instead of `cargo build --profile ship`.
# Stages each build context under modules/connected-registry/staging/<arch>/ (module.json's
# contextPath is that directory, so `iotedgedev build` works once this has run), builds with the
# classic builder and prints the image ids and sizes. Idempotent; works on a fresh Debian 12
# machine with Rust and Docker, as root (it installs what it needs).
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-all}"
case "$which" in
  amd64|arm64|all) ;;
  *) echo "usage: $0 [amd64|arm64|all]" >&2; exit 2 ;;
esac

VERSION=0.1.0
REPO=connected-registry
MODULE_DIR=modules/connected-registry
UID_GID=1000
export DEBIAN_FRONTEND=noninteractive
export DOCKER_BUILDKIT=0

command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not running (docker info failed)" >&2; exit 1; }
need_apt=()
for pkg in binutils file; do # readelf; file
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The files every image carries besides the binary: the runtime user, name service order (so
# names resolve from /etc/hosts, then DNS, e.g. `edgeHub` on the IoT Edge network), a /tmp.
stage_common() {
  local root="$1"
  mkdir -p "$root/etc" "$root/tmp" "$root/usr/local/bin" "$(dirname "$root")/data"
  chmod 1777 "$root/tmp"
  cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
connected-registry:x:$UID_GID:$UID_GID:connected-registry:/var/acr/data:/sbin/nologin
EOF
  cat >"$root/etc/group" <<EOF
root:x:0:
connected-registry:x:$UID_GID:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# A fresh staging directory for one architecture; prints its rootfs path.
fresh_stage() {
  local stage="$MODULE_DIR/staging/$1"
  rm -rf "$stage"
  mkdir -p "$stage/rootfs"
  stage_common "$stage/rootfs"
  echo "$stage/rootfs"
}

build_image() { # arch platform dockerfile tag
  local started old new out
  started=$(date +%s)
  old=$(docker image inspect -f '{{.Id}}' "$4" 2>/dev/null || true)
  if ! out=$(docker build -q --platform "$2" -f "$MODULE_DIR/$3" -t "$4" "$MODULE_DIR" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  echo "built $4 in $(( $(date +%s) - started ))s" >&2
  # Drop the image this tag used to name, so rebuilds leave no dangling images behind (kept if
  # a container still uses it).
  new=$(docker image inspect -f '{{.Id}}' "$4")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  local arch
  arch=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$4")
  [ "$arch" = "$2" ] || { echo "$4 is $arch, expected $2" >&2; exit 1; }
}

build_amd64() {
  # AMD64_BINARY names an already built binary (the tests pass the one under test); otherwise
  # the shipped build (`cargo build --profile ship`), a no-op when it is up to date.
  local bin="${AMD64_BINARY:-}"
  if [ -z "$bin" ]; then
    cargo build --profile ship --bin connected-registry >&2
    bin=target/ship/connected-registry
  fi
  [ -x "$bin" ] || { echo "no executable at $bin" >&2; exit 1; }
  local root
  root=$(fresh_stage amd64)
  cp "$bin" "$root/usr/local/bin/connected-registry"
  # Exactly what ldd lists, at the same paths (the loader by its PT_INTERP path).
  local libs
  libs=$(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}')
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  local interp
  interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -e "$root$interp" ] || { echo "loader $interp not staged" >&2; exit 1; }
  echo "amd64 libraries:" $libs >&2
  build_image amd64 linux/amd64 Dockerfile.amd64 "$REPO:$VERSION-amd64"
}

build_arm64() {
  local bin
  bin=$(scripts/cross-arm64.sh | tail -n 1)
  local root
  root=$(fresh_stage arm64)
  cp "$bin" "$root/usr/local/bin/connected-registry"
  build_image arm64 linux/arm64 Dockerfile.arm64 "$REPO:$VERSION-arm64v8"
}

case "$which" in
  amd64) build_amd64 ;;
  arm64) build_arm64 ;;
  all) build_amd64; build_arm64 ;;
esac

echo "IMAGE                            ID                                                                       SIZE"
for tag in "$REPO:$VERSION-amd64" "$REPO:$VERSION-arm64v8"; do
  if docker image inspect "$tag" >/dev/null 2>&1; then
    docker image inspect -f "{{.Id}} {{.Size}}" "$tag" |
      awk -v tag="$tag" '{printf "%-32s %s %.1f MB\n", tag, $1, $2/1000000}'
  fi
done
