#!/usr/bin/env bash
# bench/field.sh — the field scenarios (tests/scenarios/) at full size
#
# HOW TO RUN (results: the "Field" section of BENCHMARKS.md)
#   ./bench/field.sh                          # builds the test binary, then runs every scenario
#   SCENARIOS=factory,crashes ./bench/field.sh
#   FIELD_BIG_MIB=1024 ./bench/field.sh       # the crash scenario's image (default here: 500 MiB)
#
# The suite is the one `scripts/test.sh` runs (there the crash scenario's image is 64 MiB): three
# Docker networks for the layers, root → top (ReadWrite) → lower (an IoT Edge module under the
# stand-in), every node a container of the module's own image. It prints each scenario's
# figures (push-to-pullable time per layer, the big image's time through two layers with a
# kill of the top mid-sync and of the lower mid-upload, recovery times) and the table, also in target/scenarios-report.md.
# Needs what scripts/test.sh installs (Docker engine, skopeo, mosquitto, busybox-static).
# Run it on an otherwise idle machine: every node shares the same cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export FIELD_BIG_MIB=${FIELD_BIG_MIB:-500}
cargo build --release --bins --test integration
# Every node is a container of the module's image, built from the shipped build.
cargo build --profile ship --bin connected-registry
export CR_IMAGE_BINARY=$PWD/target/ship/connected-registry
cargo test --release --test integration scenarios:: -- --nocapture
