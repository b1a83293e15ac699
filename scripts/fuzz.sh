#!/usr/bin/env bash
# A short `cargo fuzz` run (nightly, libFuzzer) of every parser that reads the network: routes,
# names/references/digests, manifests, Authorization headers and JWTs, WWW-Authenticate
# challenges, change-feed queries, connection strings. FUZZ_SECONDS per target (default 20).
# Env: FUZZ_SECONDS, FUZZ_TARGET_DIR (default ~/.cache/connected-registry/target-fuzz).
# A crash fails the run; its input is left in fuzz/artifacts/<target>/ to become a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds=${FUZZ_SECONDS:-20}
targets=(routes names manifests authorization challenges feed_query connection_string)
# The instrumented build keeps its own target directory outside the clone (like the arm64 cross
# build), so CI runs on one machine share the dependencies' build.
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/connected-registry/target-fuzz}
cargo +nightly fuzz build --release --target-dir "$target_dir"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="corpus/$t.log"
  if ! cargo +nightly fuzz run --release --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t FAILED; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  echo "fuzz target $t: ${runs} inputs in ${seconds}s, no crash"
done
