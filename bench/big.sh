#!/usr/bin/env bash
# bench/big.sh — a big registry: many repositories, tags and manifests in one node (issue 11, part 3)
#
# HOW TO RUN (results: BENCHMARKS.md, "A big registry")
#   ./bench/big.sh                          # cargo build --profile ship (binary + big-registry), then measure
#   SKIP_BUILD=1 BIG_REPOS="10000" ./bench/big.sh
#   METADATA_CACHE=64MiB ./bench/big.sh     # the nodes' storage.metadataCache (default: the node's)
#   MANIFEST_CACHE=128MiB ./bench/big.sh    # the nodes' storage.manifestCache (default: the node's)
#   BENCH_OUT=big.json ./bench/big.sh
#
# For each repository count R in BIG_REPOS (default 1250 2500 5000 10000: the cost table), with
# TAGS tagged and UNTAGGED untagged manifests per repository (defaults 10 and 10, so 10,000
# repositories hold 100,000 tags and 200,000 manifests):
#   1. a fresh node is seeded over its API by bench/big_registry.rs (`seed`, 8 connections);
#   2. it is stopped (SIGTERM) and started again: the time until /v2/ answers, and the RSS then;
#   3. `measure`: every `_catalog` page (n=100, `last`), the `tags/list` of 200 repositories
#      (every page checked complete and ordered), then manifest GETs by tag on 8 connections:
#      every tag once, in a scattered order, right after the start (the cold rate: every GET is
#      a tag's first since the start), then 10 s of random tags (the rate); the same GETs
#      against a node holding one tag, measured again right after each size's (the VM's speed
#      drifts over minutes), give the small-registry rate that size is compared with;
#   4. the size of the metadata directory per tag and per manifest;
#   5. a child selecting 1 % of the repositories (every 100th, by exact name) runs
#      `sync --once` twice: the first pass fetches, the second finds nothing new. For the largest
#      R the same child syncs from Debian's docker-registry seeded with exactly those
#      repositories (a child naming its repositories never sees the others).
# Needs: cargo (unless SKIP_BUILD=1), docker-registry, curl, python3. Never in CI; idle machine.

set -euo pipefail

BIG_REPOS=${BIG_REPOS:-1250 2500 5000 10000}
TAGS=${TAGS:-10}
UNTAGGED=${UNTAGGED:-10}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
OURS_BIN=${OURS_BIN:-$TARGET/ship/connected-registry}
TOOL=${TOOL:-$TARGET/ship/examples/big-registry}

BENCH_NAME=big
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"

if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$REPO_ROOT" && cargo build --profile ship --bin connected-registry --example big-registry) >&2
fi
[[ -x $OURS_BIN && -x $TOOL ]] || die "missing $OURS_BIN or $TOOL"
require_tools "docker-registry, curl: apt-get install -y docker-registry curl" docker-registry curl python3

WORK=$(mktemp -d "${TMPDIR:-/tmp}/big.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
RESULTS=$WORK/results.txt
: >"$RESULTS"
NODE_ARGS=()
if [[ -n ${METADATA_CACHE:-}${MANIFEST_CACHE:-} ]]; then
    python3 -c 'import json, sys; print(json.dumps({"storage": {k: v for k, v in
        (("metadataCache", sys.argv[1]), ("manifestCache", sys.argv[2])) if v}}))' \
        "${METADATA_CACHE:-}" "${MANIFEST_CACHE:-}" >"$WORK/node.json"
    NODE_ARGS=(--config "$WORK/node.json")
fi
start_node() { # DATA PORT -> sets NODE_PID once /v2/ answers
    "$OURS_BIN" serve "${NODE_ARGS[@]}" --listen "127.0.0.1:$2" --data-dir "$1" >>"$1.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    wait_ready "the node on $1" "http://127.0.0.1:$2" "$NODE_PID" "$1.log"
}

# child_sync KEY PARENT_URL R: two `sync --once` passes of a child selecting every 100th repository
child_sync() {
    local key=$1 parent=$2 r=$3 names
    names=$(python3 -c "import json,sys; r=int(sys.argv[1]); print(json.dumps(['big/r%05d' % i for i in range(0, r, 100)]))" "$r")
    printf '{"parent": {"endpoint": "%s", "sync": {"repositories": %s}}}' "$parent" "$names" >"$WORK/child.json"
    rm -rf "$WORK/child"
    for pass in first second; do
        local t0 t1
        t0=$(now_ns)
        "$OURS_BIN" sync --once --config "$WORK/child.json" --data-dir "$WORK/child" >"$WORK/$key-$pass.out" 2>&1 ||
            { cat "$WORK/$key-$pass.out" >&2; die "child sync ($key) failed"; }
        t1=$(now_ns)
        record "${key}_${pass}_s" "$(secs "$t0" "$t1")"
        log "$key $pass pass: $(tail -1 "$WORK/$key-$pass.out")"
    done
}

# The small-registry manifest GET rate: one repository, one tag; its node stays up, and is
# measured again right after each size's GETs.
small_port=$(free_port)
start_node "$WORK/small" "$small_port"
SMALL_PID=$NODE_PID
"$TOOL" --addr "127.0.0.1:$small_port" --repos 1 --tags 1 --untagged 0 seed >/dev/null
small_rate() { # KEY: measure the small registry, record its GET rate under KEY
    "$TOOL" --addr "127.0.0.1:$small_port" --repos 1 --tags 1 --untagged 0 measure --tag-samples 1 >"$WORK/small.json"
    record "$1" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifestGetsPerSecond"])' "$WORK/small.json")"
}
small_rate small_get_rps

for r in $BIG_REPOS; do
    data=$WORK/data-$r
    port=$(free_port)
    start_node "$data" "$port"
    log "R=$r: seeding $((r * TAGS)) tags, $((r * (TAGS + UNTAGGED))) manifests"
    "$TOOL" --addr "127.0.0.1:$port" --repos "$r" --tags "$TAGS" --untagged "$UNTAGGED" seed >"$WORK/seed-$r.json"
    record "seed_$r" "$(cat "$WORK/seed-$r.json")"
    stop_pid "$NODE_PID"
    record "metadata_bytes_$r" "$(du -sb "$data/metadata" | awk '{print $1}')"
    t0=$(now_ns)
    start_node "$data" "$port"
    t1=$(now_ns)
    record "start_s_$r" "$(secs "$t0" "$t1")"
    record "start_rss_kib_$r" "$(rss_kib "$NODE_PID")"
    log "R=$r: measuring listings and manifest GETs"
    "$TOOL" --addr "127.0.0.1:$port" --repos "$r" --tags "$TAGS" --untagged "$UNTAGGED" measure >"$WORK/measure-$r.json"
    record "measure_$r" "$(cat "$WORK/measure-$r.json")"
    record "after_rss_kib_$r" "$(rss_kib "$NODE_PID")"
    small_rate "small_get_rps_$r"
    child_sync "ours_child_$r" "http://127.0.0.1:$port" "$r"
    stop_pid "$NODE_PID"
done

# The same child against distribution holding the selected repositories of the largest R.
largest=$(printf '%s\n' $BIG_REPOS | sort -n | tail -1)
dport=$(free_port)
mkdir -p "$WORK/dist"
cat >"$WORK/dist/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  cache: {blobdescriptor: inmemory}
  filesystem: {rootdirectory: $WORK/dist/root}
http:
  addr: 127.0.0.1:$dport
YML
docker-registry serve "$WORK/dist/config.yml" >"$WORK/dist/log" 2>&1 &
DIST_PID=$!
PIDS+=("$DIST_PID")
wait_ready distribution "http://127.0.0.1:$dport" "$DIST_PID" "$WORK/dist/log"
"$TOOL" --addr "127.0.0.1:$dport" --repos "$largest" --tags "$TAGS" --untagged "$UNTAGGED" --concurrency 4 \
    seed --stride 100 >"$WORK/dist-seed.json"
child_sync "dist_child_$largest" "http://127.0.0.1:$dport" "$largest"
stop_pid "$DIST_PID"
stop_pid "$SMALL_PID"

python3 - "$RESULTS" "$BIG_REPOS" "$TAGS" "$UNTAGGED" "${BENCH_OUT:-}" <<'PY'
import json, sys
path, repos, tags, untagged, out = sys.argv[1:6]
r = {}
for line in open(path):
    k, v = line.split(None, 1)
    v = v.strip()
    try:
        r[k] = json.loads(v)
    except ValueError:
        r[k] = v
repos, tags, untagged = [int(x) for x in repos.split()], int(tags), int(untagged)
small = float(r["small_get_rps"])
print("=== a big registry ===")
hdr = (f"{'repos':>6} {'tags':>7} {'manifests':>9} {'seed/s':>7} {'start s':>7} {'start RSS':>9}"
       f" {'catalog p50/p99 ms':>19} {'tags p50/p99 ms':>16} {'cold GET/s':>10} {'GET/s':>7} {'small':>7} {'vs small':>8}"
       f" {'meta B/tag':>10} {'1% sync 1st/2nd s':>18}")
print(hdr)
print("-" * len(hdr))
for n in repos:
    m, s = r[f"measure_{n}"], r[f"seed_{n}"]
    meta = float(r[f"metadata_bytes_{n}"])
    print(f"{n:>6} {n*tags:>7} {n*(tags+untagged):>9} {s['manifestsPerSecond']:>7.0f}"
          f" {float(r[f'start_s_{n}']):>7.3f} {float(r[f'start_rss_kib_{n}'])/1024:>7.1f}Mi"
          f" {m['catalogPageMs']['p50']:>8.2f} / {m['catalogPageMs']['p99']:>6.2f}"
          f" {m['tagsListPageMs']['p50']:>6.2f} / {m['tagsListPageMs']['p99']:>6.2f}"
          f" {m['manifestGetsPerSecondCold']:>10.0f}"
          f" {m['manifestGetsPerSecond']:>7.0f} {float(r[f'small_get_rps_{n}']):>7.0f}"
          f" {m['manifestGetsPerSecond']/float(r[f'small_get_rps_{n}']):>7.2f}x"
          f" {meta/(n*tags):>10.0f}"
          f" {float(r[f'ours_child_{n}_first_s']):>8.2f} / {float(r[f'ours_child_{n}_second_s']):>6.2f}")
big = max(repos)
print()
print(f"small registry (1 repository, 1 tag): {small:.0f} manifest GET/s on 8 connections at the"
      " start; 'small' is the same measured right after each size's GETs, which 'vs small' compares with")
print(f"child selecting 1% of {big} repositories, first / second pass:"
      f" from ours {float(r[f'ours_child_{big}_first_s']):.2f} / {float(r[f'ours_child_{big}_second_s']):.2f} s,"
      f" from distribution {float(r[f'dist_child_{big}_first_s']):.2f} / {float(r[f'dist_child_{big}_second_s']):.2f} s")
print("targets: start < 1 s with bounded RSS; manifest GET within 10 % of the small registry")
print()
print("raw:")
for k in sorted(r):
    print(f"  {k} = {json.dumps(r[k]) if isinstance(r[k], dict) else r[k]}")
if out:
    json.dump(r, open(out, "w"), indent=2)
    print(f"wrote {out}")
PY
