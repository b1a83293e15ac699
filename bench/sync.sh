#!/usr/bin/env bash
# bench/sync.sh — connected-registry sync vs. `skopeo sync`, and requests per idle sync cycle
#
# HOW TO RUN (results and discussion: the "Sync" section of BENCHMARKS.md at the repo root)
#   ./bench/sync.sh                         # cargo build --profile ship, then ~3 min of measuring
#   SKIP_BUILD=1 ./bench/sync.sh            # use the existing target/ship/connected-registry
#   OURS_BIN=/path/to/connected-registry SKIP_BUILD=1 ./bench/sync.sh   # benchmark another build
#   BENCH_OUT=results.json ./bench/sync.sh  # also write the raw numbers as JSON
#   KEEP_TMP=1 ./bench/sync.sh              # keep the temp dir (server and child logs, layout)
#
# Needs: docker-registry (apt-get install docker-registry), skopeo, curl, python3, jq, sha256sum,
# GNU time at /usr/bin/time (and cargo unless SKIP_BUILD=1). Runs on demand only, never in CI.
# Run it on an otherwise idle machine (no cargo builds or test suites running): parent, client
# and destination share the same cores, and on a busy 2-vCPU box the times swing by 2x.
#
# WHAT IT DOES (one run; every server on a loopback port with a fresh temp data dir):
#   0. writes an OCI layout by hand (bench/sync_gen_oci.py): SMALL_COUNT (20) images of one random
#      uncompressed SMALL_MIB (10) MiB layer, plus one image of BIG_LAYERS (4) x BIG_LAYER_MIB (128)
#      MiB layers; no blob is shared, so every byte has to move. Starts distribution A (the parent)
#      and pushes them as bench/app0..19:v1 and bench/big:v1 with `skopeo copy --preserve-digests`.
#   1. full sync from A into an empty destination, RUNS (3) times each, alternating who goes first:
#        ours:   connected-registry sync --once (repositories ["bench/**"], concurrency CONCURRENCY)
#                into a fresh data dir
#        skopeo: skopeo sync --src yaml --dest docker --preserve-digests (one process, a YAML
#                source naming the 21 repositories and their tag) into a fresh distribution B
#      Both destinations end up with the same manifests (same digests, checked every run) and the
#      same blobs; the first run of ours is also checked byte for byte (every blob re-hashed).
#      Wall time (median), plus CPU seconds of the client, of A and of B for each run.
#      Floor: the same blobs fetched from A with curl (CONCURRENCY in parallel) to /dev/null, and
#      to files on the same disk followed by fsync (no registry on the receiving side).
#   2. requests per idle cycle against a plain OCI parent: `connected-registry serve` as a child of
#      A; once its initial sync succeeded and A's access log is quiet, count A's access-log lines
#      over IDLE_SECS (30) s (window edges placed in quiet gaps, so only whole cycles are counted);
#      cycles = number of /v2/_catalog requests (one per reconcile pass).
#   3. requests while idle against a connected-registry parent C (seeded with the same 21 images
#      via skopeo): a child follows /acr/connected-registry/v1/changes (one stream for as long as
#      it lasts; long-polls where a parent does not stream); count the requests C logs
#      (RUST_LOG=connected_registry=debug, one line per request) over FEED_IDLE_SECS (60) s.
# Prints machine info, one table with the targets, then every raw number.
#
# Knobs (env): SMALL_COUNT=20 SMALL_MIB=10 BIG_LAYERS=4 BIG_LAYER_MIB=128 RUNS=3 CONCURRENCY=4
#              IDLE_SECS=30 FEED_IDLE_SECS=60 SEED_PARALLEL=4 (skopeo copies at once while seeding)
#              BENCH_TMPDIR=<dir for data + layout; default $TMPDIR or /tmp; must not be tmpfs if
#              the fsync cost is to be real>
#
# Parent A logs at level info with its access log on (that is what step 2 counts); it serves both
# contenders the same way. Destination B gets the best-case config of bench/run.sh (in-memory blob
# descriptor cache, access log off, log level error). Our child runs at its default log level.

set -euo pipefail

SMALL_COUNT=${SMALL_COUNT:-20}
SMALL_MIB=${SMALL_MIB:-10}
BIG_LAYERS=${BIG_LAYERS:-4}
BIG_LAYER_MIB=${BIG_LAYER_MIB:-128}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-4}
IDLE_SECS=${IDLE_SECS:-30}
FEED_IDLE_SECS=${FEED_IDLE_SECS:-60}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$REPO_ROOT/bench
OURS_BIN=${OURS_BIN:-$REPO_ROOT/target/ship/connected-registry}
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"

# ---- tools -------------------------------------------------------------------------------------
require_tools "docker-registry, skopeo, curl, jq, time: apt-get install -y docker-registry skopeo curl jq time" \
    docker-registry skopeo curl python3 jq sha256sum awk xargs /usr/bin/time

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --profile ship"
    (cd "$REPO_ROOT" && cargo build --profile ship --bin connected-registry --quiet) ||
        die "cargo build --profile ship failed"
fi
[[ -x $OURS_BIN ]] || die "$OURS_BIN not found; build it (cargo build --profile ship) or set OURS_BIN"

# ---- temp dir, processes, cleanup --------------------------------------------------------------
WORK=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}" sync-bench.XXXXXX)
A_PID=""      # distribution: the parent
B_PID=""      # distribution: skopeo's destination
C_PID=""      # connected-registry: the parent with a change feed
CHILD_PID=""  # connected-registry serve --config (a child of A or of C)
CHECK_PID=""  # connected-registry serve on the data dir of a sync --once, to check its content

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CHECK_PID"
    stop_pid "$CHILD_PID"
    stop_pid "$C_PID"
    stop_pid "$B_PID"
    stop_pid "$A_PID"
    wait 2>/dev/null || true
    if [[ -n ${KEEP_TMP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# start_dist NAME PORT DATADIR ACCESSLOG(on|off) -> sets DIST_STARTED_PID
start_dist() {
    local name=$1 port=$2 dir=$3 access=$4 level=error disabled=true
    if [[ $access == on ]]; then level=info; disabled=false; fi
    mkdir -p "$dir"
    cat >"$WORK/$name.yml" <<EOF
version: 0.1
log:
  level: $level
  accesslog:
    disabled: $disabled
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $dir
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$WORK/$name.yml" >>"$WORK/$name.log" 2>&1 &
    DIST_STARTED_PID=$!
    wait_ready "docker-registry ($name)" "http://127.0.0.1:$port" "$DIST_STARTED_PID" "$WORK/$name.log"
}

new_port() { # a free port not handed out before in this run
    local p
    p=$(free_port)
    while [[ " ${USED_PORTS[*]} " == *" $p "* ]]; do p=$(free_port); done
    USED_PORTS+=("$p")
    echo "$p"
}
USED_PORTS=()

A_PORT=$(new_port); B_PORT=$(new_port); C_PORT=$(new_port)
CHILD_PORT=$(new_port); CHECK_PORT=$(new_port)
A_URL=http://127.0.0.1:$A_PORT
B_URL=http://127.0.0.1:$B_PORT
C_URL=http://127.0.0.1:$C_PORT
CHILD_URL=http://127.0.0.1:$CHILD_PORT
CHECK_URL=http://127.0.0.1:$CHECK_PORT

# ---- machine -----------------------------------------------------------------------------------
fs_type=$(df -PT "$WORK" | awk 'NR==2 {print $2}')
echo "=== machine ==="
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc:       $(nproc)"
echo "cpu:         $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
echo "memory:      $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel:      $(uname -sr)"
echo "load:        $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, at start)"
echo "data dir fs: $fs_type ($(df -P "$WORK" | awk 'NR==2 {print $1}'), $WORK)"
echo "ours:        $("$OURS_BIN" --version) (git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', src dirty'))"
echo "peer:        $(docker-registry --version 2>/dev/null | head -1)"
echo "clients:     $(skopeo --version), $(curl --version | head -1 | awk '{print $1, $2}')"
echo "content:     $SMALL_COUNT x $SMALL_MIB MiB + $BIG_LAYERS x $BIG_LAYER_MIB MiB, runs $RUNS, concurrency $CONCURRENCY"
[[ $fs_type == tmpfs ]] && log "warning: $WORK is on tmpfs; fsync costs nothing there"
echo

# ---- helpers -----------------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"
# CPU seconds (user + system) a process has used so far
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / t}' "/proc/$1/stat"; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# "<manifest digest>" of REPO:TAG at BASE (HEAD with the OCI Accept header), or "" if none
remote_digest() {
    curl -sfI -H "Accept: $OCI_MANIFEST" "$1/v2/$2/manifests/$3" |
        awk 'tolower($1)=="docker-content-digest:" {sub(/\r$/, "", $2); print $2}' || true
}

# check_manifests NAME BASE: every bench image at BASE has the digest the generator wrote
check_manifests() {
    local name=$1 base=$2 repo tag digest got bad=0
    while read -r repo tag digest _; do
        got=$(remote_digest "$base" "$repo" "$tag")
        if [[ $got != "$digest" ]]; then
            log "$name: $repo:$tag is '${got:-missing}', expected $digest"
            bad=$((bad + 1))
        fi
    done <"$WORK/images.txt"
    ((bad == 0)) || die "$name: $bad image(s) missing or with a different digest"
}

# wait_quiet FILE: wait until FILE has not grown for 0.5 s (at most 60 s); prints its line count
wait_quiet() {
    local last cur stable=0
    last=$(wc -l <"$1")
    for _ in $(seq 600); do
        sleep 0.1
        cur=$(wc -l <"$1")
        if [[ $cur == "$last" ]]; then
            stable=$((stable + 1))
            if ((stable >= 5)); then echo "$cur"; return 0; fi
        else
            stable=0
            last=$cur
        fi
    done
    die "$1 kept growing for 60 s; is something else talking to the server?"
}

# requests between lines N0+1..N1 of a log, one "METHOD PATH" per line
dist_requests() { # log n0 n1 (distribution access-log lines)
    sed -n "$(($2 + 1)),$3p" "$1" | grep -E '^[0-9a-f.:]+ - - \[' |
        grep -oE '"[A-Z]+ [^ ?"]*' | sed 's/^"//' || true
}
ours_requests() { # log n0 n1 (our `request` debug lines)
    sed -n "$(($2 + 1)),$3p" "$1" | strip_ansi | grep -E ' request method=[A-Z]+ path=' |
        sed -E 's/.* request method=([A-Z]+) path=([^ ]*).*/\1 \2/' || true
}
# "count METHOD route" per kind of request, most frequent first
classify() {
    sed -E 's#^([A-Z]+) /v2/.+/tags/list$#\1 /v2/<repo>/tags/list#;
            s#^([A-Z]+) /v2/.+/manifests/.+#\1 /v2/<repo>/manifests/<ref>#;
            s#^([A-Z]+) /v2/.+/blobs/.+#\1 /v2/<repo>/blobs/<digest>#;
            s#^([A-Z]+) /v2/.+/referrers/.+#\1 /v2/<repo>/referrers/<digest>#' |
        sort | uniq -c | sort -rn | awk '{printf "%s%s %s=%s", (NR > 1 ? ", " : ""), $2, $3, $1} END {print ""}'
}

# wait_synced URL: wait (at most 600 s) until the child at URL reports a successful sync pass
wait_synced() {
    local st
    for _ in $(seq 3000); do
        kill -0 "$CHILD_PID" 2>/dev/null || { tail -n 20 "$WORK/child.log" >&2; die "the child exited (log above)"; }
        st=$(curl -sf "$1/acr/connected-registry/v1/status" | jq -r '.sync.lastSuccessfulSyncEndTime // empty' || true)
        [[ -n $st ]] && return 0
        sleep 0.2
    done
    die "the child at $1 did not finish its initial sync within 600 s"
}

# ---- 0. content, parent A ----------------------------------------------------------------------
log "writing the OCI layout ($SMALL_COUNT x $SMALL_MIB MiB + $BIG_LAYERS x $BIG_LAYER_MIB MiB)"
python3 "$BENCH_DIR/sync_gen_oci.py" "$WORK/layout" "$SMALL_COUNT" "$SMALL_MIB" "$BIG_LAYERS" \
    "$BIG_LAYER_MIB" | awk '{print "bench/" $1, "v1", $2, $3, $1}' >"$WORK/images.txt"
# images.txt: repo tag manifest-digest bytes layout-ref
TOTAL_BYTES=$(awk '{s += $4} END {print s}' "$WORK/images.txt")
N_IMAGES=$(wc -l <"$WORK/images.txt")
# blobs.txt: repo digest (config and layers of every image)
while read -r repo _ digest _ _; do
    jq -r --arg r "$repo" '([.config] + .layers)[] | "\($r) \(.digest)"' \
        "$WORK/layout/blobs/sha256/${digest#sha256:}"
done <"$WORK/images.txt" >"$WORK/blobs.txt"
N_BLOBS=$(wc -l <"$WORK/blobs.txt")
record total_mib "$(awk -v b="$TOTAL_BYTES" 'BEGIN {printf "%.1f", b / 1048576}')"
record images "$N_IMAGES"
record blobs "$N_BLOBS"

start_dist a "$A_PORT" "$WORK/a" on
A_PID=$DIST_STARTED_PID
# Push every image of the layout to the registry on port $1 with `skopeo copy
# --preserve-digests`, SEED_PARALLEL (4) copies at a time (1,000 small images one by one take
# longer than the measurements).
seed_registry() {
    local port=$1
    # shellcheck disable=SC2016
    xargs -P "${SEED_PARALLEL:-4}" -L 1 sh -c 'skopeo copy --quiet --preserve-digests \
        --dest-tls-verify=false "oci:$0:$6" "docker://127.0.0.1:$1/$2:$3" >/dev/null' \
        "$WORK/layout" "$port" <"$WORK/images.txt"
}

log "seeding A ($A_URL) with $N_IMAGES images: skopeo copy --preserve-digests"
seed_registry "$A_PORT"
check_manifests A "$A_URL"

# ---- 1. full sync: ours vs skopeo --------------------------------------------------------------
cat >"$WORK/child-a.json" <<EOF
{"parent": {"endpoint": "$A_URL", "sync": {"repositories": ["bench/**"], "concurrency": $CONCURRENCY}}}
EOF
{
    echo "127.0.0.1:$A_PORT:"
    echo "  tls-verify: false"
    echo "  images:"
    while read -r repo tag _; do echo "    $repo: [$tag]"; done <"$WORK/images.txt"
} >"$WORK/skopeo-src.yml"
# skopeo sync with a YAML source puts each repository under DESTINATION by its last path component
# (bench/app0 -> <dest>/app0), so the destination is B/bench: same names as in A.
SKOPEO_DEST=127.0.0.1:$B_PORT/bench

run_ours() { # run index -> records; the data dir stays for the content check
    local i=$1 dir=$WORK/ours-data a0 a1 t0 t1 rc=0
    rm -rf "$dir"; sync
    a0=$(cpu_s "$A_PID")
    t0=$(now_ns)
    /usr/bin/time -f '%U %S' -o "$WORK/ours-cpu.txt" \
        "$OURS_BIN" sync --once --config "$WORK/child-a.json" --data-dir "$dir" \
        >"$WORK/ours-sync-$i.out" 2>"$WORK/ours-sync-$i.err" || rc=$?
    t1=$(now_ns)
    a1=$(cpu_s "$A_PID")
    if ((rc != 0)); then
        cat "$WORK/ours-sync-$i.out" >&2; tail -n 20 "$WORK/ours-sync-$i.err" >&2
        die "connected-registry sync --once exited with $rc (above)"
    fi
    OURS_T+=("$(secs "$t0" "$t1")")
    OURS_CPU+=("$(awk '{printf "%.2f", $1 + $2}' "$WORK/ours-cpu.txt")")
    OURS_ACPU+=("$(awk -v a="$a0" -v b="$a1" 'BEGIN {printf "%.2f", b - a}')")
    log "ours   run $i: ${OURS_T[-1]} s; $(tr -d '\n' <"$WORK/ours-sync-$i.out")"
}

run_skopeo() { # run index -> records; B keeps running until the next skopeo run replaces it
    local i=$1 b0 b1 a0 a1 t0 t1 rc=0
    stop_pid "$B_PID"; B_PID=""
    rm -rf "$WORK/b"; sync
    start_dist b "$B_PORT" "$WORK/b" off
    B_PID=$DIST_STARTED_PID
    a0=$(cpu_s "$A_PID"); b0=$(cpu_s "$B_PID")
    t0=$(now_ns)
    /usr/bin/time -f '%U %S' -o "$WORK/skopeo-cpu.txt" \
        skopeo sync --src yaml --dest docker --dest-tls-verify=false --preserve-digests \
        "$WORK/skopeo-src.yml" "$SKOPEO_DEST" >"$WORK/skopeo-sync-$i.out" 2>&1 || rc=$?
    t1=$(now_ns)
    a1=$(cpu_s "$A_PID"); b1=$(cpu_s "$B_PID")
    if ((rc != 0)); then tail -n 20 "$WORK/skopeo-sync-$i.out" >&2; die "skopeo sync exited with $rc (above)"; fi
    SKOPEO_T+=("$(secs "$t0" "$t1")")
    SKOPEO_CPU+=("$(awk '{printf "%.2f", $1 + $2}' "$WORK/skopeo-cpu.txt")")
    SKOPEO_ACPU+=("$(awk -v a="$a0" -v b="$a1" 'BEGIN {printf "%.2f", b - a}')")
    SKOPEO_BCPU+=("$(awk -v a="$b0" -v b="$b1" 'BEGIN {printf "%.2f", b - a}')")
    log "skopeo run $i: ${SKOPEO_T[-1]} s; $(tail -n 1 "$WORK/skopeo-sync-$i.out" | sed 's/.*msg="\([^"]*\)".*/\1/')"
    check_manifests "skopeo's destination B (run $i)" "$B_URL"
}

# Byte-for-byte check of what `sync --once` left in its data dir: serve it (no config) and
# compare every manifest digest and re-hash every blob.
check_ours_content() {
    local repo digest got bad=0
    "$OURS_BIN" serve --listen "127.0.0.1:$CHECK_PORT" --data-dir "$WORK/ours-data" \
        >"$WORK/check.log" 2>&1 &
    CHECK_PID=$!
    wait_ready "connected-registry (content check)" "$CHECK_URL" "$CHECK_PID" "$WORK/check.log"
    check_manifests "ours (sync --once data dir)" "$CHECK_URL"
    while read -r repo digest; do
        got=sha256:$(curl -sf "$CHECK_URL/v2/$repo/blobs/$digest" | sha256sum | awk '{print $1}')
        [[ $got == "$digest" ]] || { log "ours: blob $digest of $repo hashes to $got"; bad=$((bad + 1)); }
    done <"$WORK/blobs.txt"
    stop_pid "$CHECK_PID"; CHECK_PID=""
    ((bad == 0)) || die "ours: $bad blob(s) differ"
    log "ours: content checked ($N_IMAGES manifests, $N_BLOBS blobs re-hashed)"
}

OURS_T=(); OURS_CPU=(); OURS_ACPU=()
SKOPEO_T=(); SKOPEO_CPU=(); SKOPEO_ACPU=(); SKOPEO_BCPU=()
for i in $(seq "$RUNS"); do
    if ((i % 2)); then
        run_ours "$i"; run_skopeo "$i"
    else
        run_skopeo "$i"; run_ours "$i"
    fi
    ((i == 1)) && check_ours_content
done
stop_pid "$B_PID"; B_PID=""
rm -rf "$WORK/b" "$WORK/ours-data"
record sync_s_ours "$(median "${OURS_T[@]}")"
record sync_s_skopeo "$(median "${SKOPEO_T[@]}")"
record sync_s_runs_ours "$(IFS=,; echo "${OURS_T[*]}")"
record sync_s_runs_skopeo "$(IFS=,; echo "${SKOPEO_T[*]}")"
record client_cpu_s_runs_ours "$(IFS=,; echo "${OURS_CPU[*]}")"
record client_cpu_s_runs_skopeo "$(IFS=,; echo "${SKOPEO_CPU[*]}")"
record parent_a_cpu_s_runs_ours "$(IFS=,; echo "${OURS_ACPU[*]}")"
record parent_a_cpu_s_runs_skopeo "$(IFS=,; echo "${SKOPEO_ACPU[*]}")"
record dest_b_cpu_s_runs_skopeo "$(IFS=,; echo "${SKOPEO_BCPU[*]}")"

# Floor: the same blobs straight from A with curl, CONCURRENCY at a time, to /dev/null and to
# files (then fsync), with nothing on the receiving side but curl.
CURL_NULL=(); CURL_DISK=()
for i in $(seq "$RUNS"); do
    t0=$(now_ns)
    xargs -P "$CONCURRENCY" -n 2 sh -c 'curl -sf -o /dev/null "$0/v2/$1/blobs/$2"' "$A_URL" \
        <"$WORK/blobs.txt"
    t1=$(now_ns)
    CURL_NULL+=("$(secs "$t0" "$t1")")
    rm -rf "$WORK/curl"; mkdir -p "$WORK/curl"; sync
    t0=$(now_ns)
    xargs -P "$CONCURRENCY" -n 2 sh -c 'curl -sf -o "$1/${3#sha256:}" "$0/v2/$2/blobs/$3"' \
        "$A_URL" "$WORK/curl" <"$WORK/blobs.txt"
    sync "$WORK"/curl/*
    t1=$(now_ns)
    CURL_DISK+=("$(secs "$t0" "$t1")")
    [[ $(find "$WORK/curl" -type f | wc -l) == "$N_BLOBS" ]] || die "curl fetched fewer than $N_BLOBS blobs"
done
rm -rf "$WORK/curl"
log "curl floor: /dev/null ${CURL_NULL[*]} s; to disk + fsync ${CURL_DISK[*]} s"
record curl_null_s "$(median "${CURL_NULL[@]}")"
record curl_disk_s "$(median "${CURL_DISK[@]}")"
record curl_null_s_runs "$(IFS=,; echo "${CURL_NULL[*]}")"
record curl_disk_s_runs "$(IFS=,; echo "${CURL_DISK[*]}")"

# ---- 2. idle cycles against distribution A -----------------------------------------------------
log "child of A: initial sync, then $IDLE_SECS s idle"
RUST_LOG=connected_registry=info "$OURS_BIN" serve --config "$WORK/child-a.json" \
    --listen "127.0.0.1:$CHILD_PORT" --data-dir "$WORK/child-a-data" >"$WORK/child.log" 2>&1 &
CHILD_PID=$!
wait_synced "$CHILD_URL"
check_manifests "child of A" "$CHILD_URL"
n0=$(wait_quiet "$WORK/a.log"); t0=$(now_ns)
sleep "$IDLE_SECS"
n1=$(wait_quiet "$WORK/a.log"); t1=$(now_ns)
dist_requests "$WORK/a.log" "$n0" "$n1" >"$WORK/idle-a.txt"
idle_a_s=$(secs "$t0" "$t1")
idle_a_total=$(wc -l <"$WORK/idle-a.txt")
idle_a_cycles=$(grep -c '^GET /v2/_catalog$' "$WORK/idle-a.txt" || true)
((idle_a_cycles > 0)) || die "no reconcile cycle (GET /v2/_catalog) reached A in $idle_a_s s"
record idle_a_window_s "$idle_a_s"
record idle_a_requests "$idle_a_total"
record idle_a_cycles "$idle_a_cycles"
record idle_a_per_cycle "$(awk -v r="$idle_a_total" -v c="$idle_a_cycles" 'BEGIN {printf "%.1f", r / c}')"
record idle_a_per_30s "$(awk -v r="$idle_a_total" -v s="$idle_a_s" 'BEGIN {printf "%.1f", r * 30 / s}')"
# a pass: the catalog, tags/list and a HEAD per tag of each repository, and one referrers probe
# (distribution 2.8 has no referrers API; the child asks once per pass in case it gained one)
record idle_a_expected_per_cycle "$((2 + 2 * N_IMAGES))"
record idle_a_kinds "$(classify <"$WORK/idle-a.txt")"
record child_a_warn_error_lines "$(strip_ansi <"$WORK/child.log" | grep -cE ' (WARN|ERROR) ' || true)"
stop_pid "$CHILD_PID"; CHILD_PID=""
cp "$WORK/child.log" "$WORK/child-a.log"

# ---- 3. idle long-polls against a connected-registry parent C ----------------------------------
mkdir -p "$WORK/c"
RUST_LOG=connected_registry=debug "$OURS_BIN" serve --listen "127.0.0.1:$C_PORT" \
    --data-dir "$WORK/c" >"$WORK/c.log" 2>&1 &
C_PID=$!
wait_ready "connected-registry (parent C)" "$C_URL" "$C_PID" "$WORK/c.log"
log "seeding C ($C_URL) with $N_IMAGES images: skopeo copy --preserve-digests"
seed_registry "$C_PORT"
check_manifests C "$C_URL"
cat >"$WORK/child-c.json" <<EOF
{"parent": {"endpoint": "$C_URL", "sync": {"repositories": ["bench/**"], "concurrency": $CONCURRENCY}}}
EOF
log "child of C: initial sync, then $FEED_IDLE_SECS s idle"
c_before_child=$(wc -l <"$WORK/c.log")
t_child=$(now_ns)
RUST_LOG=connected_registry=info "$OURS_BIN" serve --config "$WORK/child-c.json" \
    --listen "127.0.0.1:$CHILD_PORT" --data-dir "$WORK/child-c-data" >"$WORK/child.log" 2>&1 &
CHILD_PID=$!
wait_synced "$CHILD_URL"
record feed_initial_sync_s "$(secs "$t_child" "$(now_ns)")"
check_manifests "child of C" "$CHILD_URL"
sleep 2  # let the first long-poll (which replays the seeding events at once) come and go
n0=$(wc -l <"$WORK/c.log"); t0=$(now_ns)
sleep "$FEED_IDLE_SECS"
n1=$(wc -l <"$WORK/c.log"); t1=$(now_ns)
ours_requests "$WORK/c.log" "$c_before_child" "$n0" >"$WORK/initial-c.txt"
ours_requests "$WORK/c.log" "$n0" "$n1" >"$WORK/idle-c.txt"
idle_c_s=$(secs "$t0" "$t1")
idle_c_total=$(wc -l <"$WORK/idle-c.txt")
idle_c_polls=$(grep -c '^GET /acr/connected-registry/v1/changes$' "$WORK/idle-c.txt" || true)
# (a child on a stream sends no request at all while idle: nothing to average then)
poll_ms=$(sed -n "$((n0 + 1)),${n1}p" "$WORK/c.log" | strip_ansi |
    { grep -E 'path=/acr/connected-registry/v1/changes ' || true; } | { grep -oE 'elapsed_ms=[0-9.]+' || true; } |
    cut -d= -f2 | awk '{s += $1; n++} END {if (n) printf "%.0f", s / n; else print 0}')
record idle_c_window_s "$idle_c_s"
record idle_c_requests "$idle_c_total"
record idle_c_long_polls "$idle_c_polls"
record idle_c_per_long_poll "$(awk -v r="$idle_c_total" -v c="$idle_c_polls" 'BEGIN {if (c) printf "%.2f", r / c; else print "inf"}')"
record idle_c_per_30s "$(awk -v r="$idle_c_total" -v s="$idle_c_s" 'BEGIN {printf "%.2f", r * 30 / s}')"
record idle_c_long_poll_mean_ms "$poll_ms"
record idle_c_kinds "$(classify <"$WORK/idle-c.txt")"
record feed_initial_requests "$(wc -l <"$WORK/initial-c.txt")"
record feed_initial_kinds "$(classify <"$WORK/initial-c.txt")"
record child_c_warn_error_lines "$(strip_ansi <"$WORK/child.log" | grep -cE ' (WARN|ERROR) ' || true)"
stop_pid "$CHILD_PID"; CHILD_PID=""
cp "$WORK/child.log" "$WORK/child-c.log"

# ---- report -----------------------------------------------------------------------------------
python3 - "$RESULTS" "$RUNS" "$CONCURRENCY" "${BENCH_OUT:-}" <<'PY'
import json, sys
path, runs, conc, out = sys.argv[1:5]
r, raw = {}, {}
for line in open(path):
    k, v = (line.rstrip("\n").split(" ", 1) + [""])[:2]
    raw[k] = v
    try:
        r[k] = float(v)
    except ValueError:
        r[k] = v

imgs, mib = int(r["images"]), r["total_mib"]
ratio = r["sync_s_ours"] / r["sync_s_skopeo"]
exp = r["idle_a_expected_per_cycle"]
rows = [
    # metric, unit, ours, peer, ratio text, target, met
    (f"full sync of {imgs} images ({mib:.0f} MiB) from distribution, median of {runs}", "s",
     f"{r['sync_s_ours']:.3f}", f"{r['sync_s_skopeo']:.3f}", f"{ratio:.2f}x", "<= 0.5x",
     "yes" if ratio <= 0.5 else "NO"),
    (f"  floor: curl the same blobs from A, {conc} parallel, to disk + fsync", "s",
     f"{r['curl_disk_s']:.3f}", "", "", "-", "-"),
    (f"  floor: curl the same blobs from A, {conc} parallel, to /dev/null", "s",
     f"{r['curl_null_s']:.3f}", "", "", "-", "-"),
    ("requests per idle cycle, distribution parent (5 s poll)", "req",
     f"{r['idle_a_per_cycle']:.1f}", "", "", f"<= {exp:.0f} (catalog, probe, 2/repo)",
     "yes" if r["idle_a_per_cycle"] <= exp else "NO"),
    ("  the same, per 30 s", "req", f"{r['idle_a_per_30s']:.1f}", "", "", "-", "-"),
    ("requests while idle per 30 s, connected-registry parent", "req",
     f"{r['idle_c_per_30s']:.2f}", "", "", "<= 1 (a stream: 0)",
     "yes" if r["idle_c_per_30s"] <= 1.0 else "NO"),
    ("  long-polls among them (0: the child follows a stream)", "req",
     f"{r['idle_c_long_polls']:.0f}", "", "", "-", "-"),
]
if r["idle_c_long_polls"] > 0:
    rows.append(("  requests per long-poll", "req", str(r["idle_c_per_long_poll"]), "", "", "1",
                 "yes" if r["idle_c_per_long_poll"] <= 1.0 else "NO"))
    rows.append(("  mean long-poll duration", "s", f"{r['idle_c_long_poll_mean_ms'] / 1000:.1f}",
                 "", "", "~30", "yes" if r["idle_c_long_poll_mean_ms"] >= 25000 else "NO"))
w = max(len(x[0]) for x in rows)
hdr = f"{'metric':<{w}}  {'unit':<4} {'ours':>9} {'skopeo':>9} {'ours/sk':>8}  {'target':<26} met"
print("=== results ===")
print(hdr)
print("-" * len(hdr))
for m, u, o, p, q, t, met in rows:
    print(f"{m:<{w}}  {u:<4} {o:>9} {p:>9} {q:>8}  {t:<26} {met}")
print()
print("raw:")
for k in sorted(raw):
    print(f"  {k} = {raw[k]}")
if out:
    with open(out, "w") as f:
        json.dump({"ratio_sync": ratio, "raw": r}, f, indent=2)
    print(f"\nwrote {out}")
PY
