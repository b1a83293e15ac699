#!/usr/bin/env bash
# Cross-compiles a static linux/arm64 `connected-registry` for the arm64v8 container image, with
# Debian's packages alone: Debian's rustc (rustc-web) and its aarch64 standard library (rustup's
# toolchain here has no aarch64 std and nothing can be downloaded), the aarch64 GNU cross
# compiler for the linker and for ring's C code, and qemu-user-static so the result (and the
# image) can run here under emulation.
#
# Usage: scripts/cross-arm64.sh          prints the path of the built binary on its last line.
# Env:   CROSS_TARGET_DIR (default target/cross): a target dir of its own, so this build never
#        waits on, or invalidates, the main `target/` build.
# Works on a fresh Debian 12 machine with Rust, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
TARGET=aarch64-unknown-linux-gnu
PROFILE=cross

# ---- toolchain --------------------------------------------------------------------------------
arch_added=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  arch_added=1
fi
need_apt=()
for pkg in rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static binfmt-support file; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] || [ "$arch_added" = 1 ]; then
  apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# rustc-web's compiler and the arm64 std it ships must match (same package version).
rustc_ver=$(dpkg-query -W -f='${Version}' rustc-web)
std_ver=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
if [ "$rustc_ver" != "$std_ver" ]; then
  echo "rustc-web ($rustc_ver) and libstd-rust-web-dev:arm64 ($std_ver) differ; upgrade both" >&2
  exit 1
fi

# ---- emulation (to run the binary and the image here) ------------------------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64
fi
# The F (fix-binary) flag opens the interpreter now, so it also works inside containers.
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
  echo "qemu-aarch64 is registered without the F flag; containers cannot use it" >&2
  exit 1
}

# ---- build --------------------------------------------------------------------------------------
export CARGO_TARGET_DIR="${CROSS_TARGET_DIR:-$PWD/target/cross}"
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# With an explicit --target these flags reach only the target crates, not build scripts.
export RUSTFLAGS="-C target-feature=+crt-static"
# jemalloc fixes its page size when built: 64 KiB works on every arm64 kernel (4, 16 and 64 KiB
# pages; a 4 KiB build refuses to start on the others), as Debian builds it for arm64.
export JEMALLOC_SYS_WITH_LG_PAGE=16

start=$(date +%s)
cargo build --profile "$PROFILE" --target "$TARGET" --bin connected-registry >&2
bin="$CARGO_TARGET_DIR/$TARGET/$PROFILE/connected-registry"
echo "cross build took $(( $(date +%s) - start ))s" >&2

# A static aarch64 executable, or the scratch image cannot run it.
desc=$(file -b "$bin")
case "$desc" in
  *aarch64*static*|*aarch64*static-pie*) ;;
  *) echo "$bin is not a static aarch64 executable: $desc" >&2; exit 1 ;;
esac
"$bin" --version >&2  # runs under qemu through binfmt_misc
echo "$bin"
