#!/usr/bin/env bash
# Runs every test against the real peers. Installs what the tests need first, so it works on a
# fresh Debian 12 machine with Rust, Python 3 and a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it starts, so CI's log shows where the time goes.
step() { echo "==> [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

export DEBIAN_FRONTEND=noninteractive
step "installing what the tests need"
need_apt=()
for pkg in docker-registry skopeo umoci podman buildah containerd runc uidmap fuse-overlayfs busybox-static jq curl wrk apache2-utils mosquitto iproute2; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
python3 -c 'import oras' 2>/dev/null || pip install -q oras==0.2.43
# Microsoft's device SDK proves the IoT Edge stand-in faithful (tests/edge_standin.rs).
python3 -c 'import azure.iot.device' 2>/dev/null || pip install -q azure-iot-device==2.14.0
# A real Prometheus text parser reads /metrics (tests/metrics.rs); kubernetes-validate checks the
# rendered manifests (tests/kubernetes.rs) and kubectl renders them with kustomize.
python3 -c 'import prometheus_client' 2>/dev/null || pip install -q prometheus-client==0.26.0
command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate==1.37.0
command -v kubectl >/dev/null || apt-get install -y -qq --no-install-recommends kubernetes-client

step "fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --release -- -D warnings
# Build once: the test binaries, the node and the stand-in; the shipped build of the node
# (`--profile ship`, one whole-program optimisation), which the amd64 image and every container
# test run; then the amd64 and arm64 images (the arm64 binary is cross-compiled with Debian's
# rustc-web).
# The cross build keeps its own target directory outside the clone, so CI runs share it.
step "building the node, the stand-in and the test binary"
cargo build --release --tests --bins
step "building the shipped node (--profile ship)"
cargo build --profile ship --bin connected-registry
export CR_IMAGE_BINARY=$PWD/target/ship/connected-registry
export CROSS_TARGET_DIR=${CROSS_TARGET_DIR:-$HOME/.cache/connected-registry/target-cross}
step "building the amd64 and arm64 images"
AMD64_BINARY=$CR_IMAGE_BINARY ./scripts/build-images.sh all
# The field scenarios (tests/scenarios/) write their table here; CI's log shows it either way.
rm -f target/scenarios-report.md
trap 'if [ -f target/scenarios-report.md ]; then cat target/scenarios-report.md; fi' EXIT
step "unit and integration tests"
cargo test --release --no-fail-fast -- --test-threads=2
step "fuzzing"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} ./scripts/fuzz.sh
step "all passed"
