#!/usr/bin/env bash
# bench/scale.sh — one root, many children following its change feed at once (issue 11, part 2)
#
# HOW TO RUN (results: BENCHMARKS.md, "A root with many children")
#   ./bench/scale.sh                       # cargo build --profile ship (binary + feed-load), then measure
#   SKIP_BUILD=1 ./bench/scale.sh
#   CHILDREN="1000 10000" RATE=100 ./bench/scale.sh
#   FEEDS=stream ./bench/scale.sh          # only children on streams (default: "stream poll")
#   BENCH_OUT=scale.json ./bench/scale.sh  # also write every run's JSON
#   ROOT_CPUS=0 LOAD_CPUS=1 ./bench/scale.sh   # root and children each on their own vCPU (taskset)
#
# For each count in CHILDREN (default: 1250 2500 5000 10000, then 1000 — the doubling series is
# the cost table) a fresh root starts (`serve` on loopback, anonymous, a temp data dir) and
# bench/feed_load.rs (the `feed-load` example) opens that many followers of
# /acr/connected-registry/v1/changes on as many connections, for each mode in FEEDS: `stream`
# (the upgraded feed a child uses against a connected-registry root) and `poll` (long-polls, as
# against an older root or through a proxy that drops the upgrade). It reports the root's RSS before
# and while they all wait, its CPU over IDLE_SECONDS of waiting, then the time from the start of
# a push to each child / to all children having its event, for PUSHES pushes made one at a time
# and for RATE pushes per second over RATE_SECONDS from PUSHERS (8) connections at once. With
# STATUS=1 the largest count runs once more (first mode of FEEDS) with every child also
# activated (spread over the first 30 s, retried while the root is busy) and reporting its
# status every 30 s.
#
# On one machine the simulated children compete with the root for the CPU; ROOT_CPUS and
# LOAD_CPUS (taskset lists) give each its own, as a root serving real children elsewhere has.
#
# The open-files limit is raised to the hard limit (root and client both need one descriptor per
# child). Needs: cargo (unless SKIP_BUILD=1), python3. Run on an idle machine, never in CI.

set -euo pipefail

CHILDREN=${CHILDREN:-1250 2500 5000 10000 1000}
PUSHES=${PUSHES:-20}
RATE=${RATE:-100}
RATE_SECONDS=${RATE_SECONDS:-10}
PUSHERS=${PUSHERS:-8}
IDLE_SECONDS=${IDLE_SECONDS:-10}
STATUS=${STATUS:-1}
FEEDS=${FEEDS:-stream poll}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
OURS_BIN=${OURS_BIN:-$TARGET/ship/connected-registry}
LOAD_BIN=${LOAD_BIN:-$TARGET/ship/examples/feed-load}

ROOT_CPUS=${ROOT_CPUS:-}
LOAD_CPUS=${LOAD_CPUS:-}
# taskset execs the command, so $! stays the root's own pid.
ROOT_PIN=() LOAD_PIN=()
[[ -n $ROOT_CPUS ]] && ROOT_PIN=(taskset -c "$ROOT_CPUS")
[[ -n $LOAD_CPUS ]] && LOAD_PIN=(taskset -c "$LOAD_CPUS")

BENCH_NAME=scale
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"

if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$REPO_ROOT" && cargo build --profile ship --bin connected-registry --example feed-load) >&2
fi
[[ -x $OURS_BIN && -x $LOAD_BIN ]] || die "missing $OURS_BIN or $LOAD_BIN (build, or unset SKIP_BUILD)"
ulimit -n "$(ulimit -Hn)"
log "open-files limit $(ulimit -n)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")
ROOT_PID=
cleanup() {
    stop_pid "$ROOT_PID"
    [[ -n ${KEEP_TMP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# run_one NAME CHILDREN [extra feed-load args...]: a fresh root, one feed-load run, JSON to $WORK/NAME.json
run_one() {
    local name=$1 children=$2
    shift 2
    local port
    port=$(free_port)
    rm -rf "$WORK/data"
    "${ROOT_PIN[@]}" "$OURS_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/data" >"$WORK/$name.log" 2>&1 &
    ROOT_PID=$!
    wait_ready root "http://127.0.0.1:$port" "$ROOT_PID" "$WORK/$name.log"
    log "$name: $children children"
    "${LOAD_PIN[@]}" "$LOAD_BIN" --addr "127.0.0.1:$port" --children "$children" --pid "$ROOT_PID" \
        --pushes "$PUSHES" --idle-seconds "$IDLE_SECONDS" "$@" >"$WORK/$name.json" 2>"$WORK/$name.err" ||
        { cat "$WORK/$name.err" >&2; die "feed-load failed for $name"; }
    stop_pid "$ROOT_PID"
    ROOT_PID=
}

echo "machine: $(nproc) vCPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "ours:    $("$OURS_BIN" --version 2>/dev/null || echo "$OURS_BIN")"
echo "CPUs:    root ${ROOT_CPUS:-any}, children ${LOAD_CPUS:-any}"
mode_args() { [[ $1 == stream ]] && echo --stream; [[ $1 == stream || $1 == poll ]] || die "FEEDS: stream or poll, not $1"; }
NAMES=()
for n in $CHILDREN; do
    for mode in $FEEDS; do
        run_one "$mode-$n" "$n" --rate "$RATE" --rate-seconds "$RATE_SECONDS" --pushers "$PUSHERS" $(mode_args "$mode")
        NAMES+=("$mode-$n")
    done
done
if [[ $STATUS == 1 ]]; then
    largest=$(printf '%s\n' $CHILDREN | sort -n | tail -1)
    mode=${FEEDS%% *}
    run_one "status-$mode-$largest" "$largest" --rate "$RATE" --rate-seconds "$RATE_SECONDS" --pushers "$PUSHERS" --status-every 30 $(mode_args "$mode")
    NAMES+=("status-$mode-$largest")
fi

python3 - "$WORK" "${BENCH_OUT:-}" "${NAMES[@]}" <<'PY'
import json, sys
work, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {n: json.load(open(f"{work}/{n}.json")) for n in names}
hdr = (f"{'run':<20} {'children':>8} {'RSS before':>10} {'RSS wait':>9} {'B/child':>7} {'CPU idle':>8}"
       f" {'1-at-a-time all p50/p99 ms':>27} {'@rate all p50/p99 ms':>21} {'rate/s':>7}")
print("=== root with many children ===")
print(hdr)
print("-" * len(hdr))
for n, r in runs.items():
    one, rate = r["oneAtATime"], r.get("atRate") or {}
    all1, allr = one["toAllChildrenMs"], (rate.get("toAllChildrenMs") or {})
    fmt = lambda d: f"{d.get('p50', float('nan')):.1f} / {d.get('p99', float('nan')):.1f}" if d else "-"
    print(f"{n:<20} {r['children']:>8} {r['rootRssKiBBefore']/1024:>8.1f}Mi {r['rootRssKiBWaiting']/1024:>7.1f}Mi"
          f" {r['rootRssBytesPerLongPoll']:>7.0f} {r['rootCpuWhileWaiting']*100:>7.2f}%"
          f" {fmt(all1):>27} {fmt(allr):>21} {rate.get('pushesPerSecondAchieved', 0):>7.1f}")
    for part in (one, rate):
        if part and part["deliveries"] != part["expectedDeliveries"]:
            print(f"  !! {n}: {part['deliveries']} of {part['expectedDeliveries']} deliveries")
    if r.get("statusReports"):
        s = r["statusReports"]
        # Children activate spread over one status period, so a short run sees most, not all.
        mark = "  " if s["failed"] == 0 else "!!"
        print(f"  {mark} {n}: {s['activated']} of {r['children']} children activated so far, "
              f"{s['reported']} status reports answered, {s['failed']} failed")
print()
print("targets: <= 8 KiB RSS per waiting child, ~0 CPU while waiting, p99 to all children < 500 ms at 10,000")
if out:
    json.dump(runs, open(out, "w"), indent=2)
    print(f"wrote {out}")
PY
