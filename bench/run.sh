#!/usr/bin/env bash
# bench/run.sh — connected-registry vs. Debian's docker-registry (CNCF distribution 2.8)
#
# HOW TO RUN (results and discussion: BENCHMARKS.md at the repo root)
#   ./bench/run.sh                          # cargo build --profile ship, then ~1 min of measuring
#   SKIP_BUILD=1 ./bench/run.sh             # use the existing target/ship/connected-registry
#   OURS_BIN=/path/to/connected-registry SKIP_BUILD=1 ./bench/run.sh   # benchmark another build
#   BENCH_OUT=results.json ./bench/run.sh   # also write the raw numbers as JSON
#   KEEP_TMP=1 ./bench/run.sh               # keep the temp dir (server logs, wrk output)
#
# Needs: wrk, docker-registry (apt-get install docker-registry), curl, python3, jq, sha256sum, dd
# (and cargo unless SKIP_BUILD=1). Runs on demand only, never in CI. Run it on an otherwise idle
# machine (no cargo builds or test suites running): both servers, wrk and the curl clients share
# the same cores, and on a busy 2-vCPU box the ratios swing by 2x.
#
# WHAT IT DOES (one run, both servers on loopback ports, each with a fresh temp data dir):
#   1. manifest GET by tag: wrk -c64 -t2 -d10s with the OCI manifest Accept header      (req/s)
#   2. blob GET of a BLOB_MIB (256) MiB blob, 1 client and 8 parallel curl clients
#      (MiB/s aggregate, median of RUNS; the page cache is warm for both)
#   3. monolithic push of a fresh random BLOB_MIB blob: POST uploads/ then PUT ?digest= with the
#      whole body (curl -T, no Expect: 100-continue); a different blob every run so nothing is
#      deduplicated                                                             (seconds, median)
#      plus a "disk floor": the same bytes written with dd O_DIRECT + fsync
#   4. RSS from /proc/PID/status: idle (after start + seeding), peak (VmHWM, reset with
#      clear_refs, cross-checked by 20 ms VmRSS sampling) during one more 8-client pull, and
#      5 s after it
#   1b. manifest PUT: a new small manifest per request (bench/put_manifest.lua), wrk with 1, 8
#      and 32 connections for PUT_DURATION each (req/s); last, so that the tens of thousands of
#      manifests it leaves in the metadata are not counted in the pulls' RSS; the RSS 5 s after
#      it is reported on its own row
#   (order of a run: 1, 3, 2, 4, 1b)
# Pushes and pulls alternate between the two servers (who goes first alternates too), so a
# change in machine load hits both. Prints machine info, then one table with the ratios
# ours/distribution next to the project's targets, then every raw number.
#
# Knobs (env): BLOB_MIB=256 RUNS=3 PARALLEL=8 WRK_CONNS=64 WRK_THREADS=2 WRK_DURATION=10s
#              BENCH_TMPDIR=<dir for data + blobs; default $TMPDIR or /tmp; must not be tmpfs
#              if the fsync cost is to be real>
#              PULL_FROM=<an address of this machine off loopback, e.g. the Docker bridge's>: the
#              pull clients of 2. bind to it (curl --interface), so both servers see a peer on
#              the network, as a LAN client is, rather than on loopback (ours then sends large
#              blob pieces with sendfile, as distribution always does; the packets still go
#              through the loopback device, and through the firewall rules that apply to
#              non-loopback addresses)
#
# distribution is configured for its best case: in-memory blob descriptor cache, access log off
# and log level error (connected-registry logs nothing per request at its default level either).
# Both servers fsync blob data before answering a push (distribution's filesystem driver syncs
# on commit; checked with strace).

set -euo pipefail

BLOB_MIB=${BLOB_MIB:-256}
RUNS=${RUNS:-3}
PARALLEL=${PARALLEL:-8}
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WRK_DURATION=${WRK_DURATION:-10s}
PUT_CLIENTS=${PUT_CLIENTS:-1 8 32}
PUT_DURATION=${PUT_DURATION:-5s}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OURS_BIN=${OURS_BIN:-$REPO_ROOT/target/ship/connected-registry}
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
source "$REPO_ROOT/bench/lib.sh"

# ---- tools -------------------------------------------------------------------------------------
require_tools "wrk, docker-registry, curl, jq: apt-get install -y wrk docker-registry curl jq" \
    wrk docker-registry curl python3 jq sha256sum awk

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --profile ship"
    (cd "$REPO_ROOT" && cargo build --profile ship --bin connected-registry --quiet) ||
        die "cargo build --profile ship failed"
fi
[[ -x $OURS_BIN ]] || die "$OURS_BIN not found; build it (cargo build --profile ship) or set OURS_BIN"

# record_rss_split WHEN: our RSS in its two parts, memory of our own (RssAnon) and the pages of
# the binary and its libraries that are mapped in (RssFile: shared with the page cache, dropped
# under memory pressure, and growing with the binary's size more than with the work).
record_rss_split() {
    local kind
    for kind in Anon File; do
        record "$1_rss_${kind,,}_mib_ours" \
            "$(awk -v k="$(rss_kib "$OURS_PID" "Rss$kind")" 'BEGIN {printf "%.1f", k/1024}')"
    done
}

# ---- temp dir, servers, cleanup ----------------------------------------------------------------
WORK=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}" registry-bench.XXXXXX)
OURS_PID=""
DIST_PID=""
SAMPLER_PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${SAMPLER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_pid "$OURS_PID"
    stop_pid "$DIST_PID"
    wait 2>/dev/null || true
    if [[ -n ${KEEP_TMP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


OURS_PORT=$(free_port)
DIST_PORT=$(free_port)
while [[ $DIST_PORT == "$OURS_PORT" ]]; do DIST_PORT=$(free_port); done
OURS_URL=http://127.0.0.1:$OURS_PORT
DIST_URL=http://127.0.0.1:$DIST_PORT
mkdir -p "$WORK/ours" "$WORK/dist" "$WORK/blobs"

"$OURS_BIN" serve --listen "127.0.0.1:$OURS_PORT" --data-dir "$WORK/ours" \
    >"$WORK/ours.log" 2>&1 &
OURS_PID=$!

cat >"$WORK/dist.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $WORK/dist
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$DIST_PORT
EOF
docker-registry serve "$WORK/dist.yml" >"$WORK/dist.log" 2>&1 &
DIST_PID=$!

wait_ready connected-registry "$OURS_URL" "$OURS_PID" "$WORK/ours.log"
wait_ready docker-registry "$DIST_URL" "$DIST_PID" "$WORK/dist.log"

# ---- machine -----------------------------------------------------------------------------------
fs_type=$(df -PT "$WORK" | awk 'NR==2 {print $2}')
echo "=== machine ==="
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc:       $(nproc)"
echo "cpu:         $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
echo "memory:      $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel:      $(uname -sr)"
echo "data dir fs: $fs_type ($(df -P "$WORK" | awk 'NR==2 {print $1}'), $WORK)"
echo "ours:        $("$OURS_BIN" --version) (git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo ', dirty'))"
echo "peer:        $(docker-registry --version 2>/dev/null | head -1)"
echo "clients:     $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(curl --version | head -1 | awk '{print $1, $2}')"
echo "pull clients: ${PULL_FROM:-on loopback}"
[[ $fs_type == tmpfs ]] && log "warning: $WORK is on tmpfs; fsync costs nothing there"
echo

# ---- helpers -----------------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: >"$RESULTS"

# push_blob BASE_URL REPO FILE DIGEST -> prints elapsed seconds (POST + PUT)
push_blob() {
    local base=$1 repo=$2 file=$3 digest=$4 t0 t1 loc code sep
    t0=$(now_ns)
    loc=$(curl -sS -o /dev/null -D - -X POST -H 'Content-Length: 0' "$base/v2/$repo/blobs/uploads/" |
        awk 'tolower($1)=="location:" {sub(/\r$/, "", $2); print $2}')
    [[ -n $loc ]] || die "POST $base/v2/$repo/blobs/uploads/ returned no Location"
    [[ $loc == /* ]] && loc=$base$loc
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    code=$(curl -sS -o "$WORK/put.out" -w '%{http_code}' -X PUT -T "$file" \
        -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        "$loc${sep}digest=${digest/:/%3A}")
    t1=$(now_ns)
    [[ $code == 201 ]] || die "PUT blob to $base ($repo) returned $code: $(head -c 300 "$WORK/put.out")"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", (b - a) / 1e9}'
}

put_manifest() { # base repo tag file
    local code
    code=$(curl -sS -o "$WORK/put.out" -w '%{http_code}' -X PUT -H "Content-Type: $OCI_MANIFEST" \
        --data-binary "@$4" "$1/v2/$2/manifests/$3")
    [[ $code == 201 ]] || die "PUT manifest to $1 returned $code: $(head -c 300 "$WORK/put.out")"
}

sha() { echo "sha256:$(sha256sum "$1" | awk '{print $1}')"; }

best_max() { printf '%s\n' "$@" | sort -g | tail -1; }

# ---- seed the small image -------------------------------------------------------------------------
log "seeding bench/small:v1 (config + one layer + OCI manifest) into both"
mkdir -p "$WORK/img/rootfs"
head -c 32768 /dev/urandom >"$WORK/img/rootfs/data.bin"
echo hello >"$WORK/img/rootfs/hello.txt"
tar -C "$WORK/img/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$WORK/img/layer.tar" .
LAYER_DIGEST=$(sha "$WORK/img/layer.tar")
LAYER_SIZE=$(stat -c %s "$WORK/img/layer.tar")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' \
    "$LAYER_DIGEST" >"$WORK/img/config.json"
CONFIG_DIGEST=$(sha "$WORK/img/config.json")
CONFIG_SIZE=$(stat -c %s "$WORK/img/config.json")
jq -cn --arg cd "$CONFIG_DIGEST" --argjson cs "$CONFIG_SIZE" \
    --arg ld "$LAYER_DIGEST" --argjson ls "$LAYER_SIZE" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]}' \
    >"$WORK/img/manifest.json"
for base in "$OURS_URL" "$DIST_URL"; do
    push_blob "$base" bench/small "$WORK/img/config.json" "$CONFIG_DIGEST" >/dev/null
    push_blob "$base" bench/small "$WORK/img/layer.tar" "$LAYER_DIGEST" >/dev/null
    put_manifest "$base" bench/small v1 "$WORK/img/manifest.json"
    got=$(curl -sS -H "Accept: $OCI_MANIFEST" "$base/v2/bench/small/manifests/v1" | sha256sum | awk '{print $1}')
    [[ sha256:$got == "$(sha "$WORK/img/manifest.json")" ]] || die "$base returns a different manifest"
done

sleep 2
for who in ours dist; do
    pid_var=${who^^}_PID
    record "idle_rss_mib_$who" "$(awk -v k="$(rss_kib "${!pid_var}" VmRSS)" 'BEGIN {printf "%.1f", k/1024}')"
done
record_rss_split idle

# ---- 1. manifest GET by tag ----------------------------------------------------------------------
for who in ours dist; do
    url_var=${who^^}_URL
    url="${!url_var}/v2/bench/small/manifests/v1"
    log "manifest GET ($who): wrk -c$WRK_CONNS -t$WRK_THREADS -d$WRK_DURATION"
    wrk -c"$WRK_CONNS" -t"$WRK_THREADS" -d2s -H "Accept: $OCI_MANIFEST" "$url" >/dev/null # warm-up
    wrk -c"$WRK_CONNS" -t"$WRK_THREADS" -d"$WRK_DURATION" --latency -H "Accept: $OCI_MANIFEST" "$url" \
        >"$WORK/wrk-$who.txt"
    if grep -q 'Non-2xx\|Socket errors' "$WORK/wrk-$who.txt"; then
        cat "$WORK/wrk-$who.txt" >&2
        die "wrk saw errors against $who (above)"
    fi
    record "manifest_rps_$who" "$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk-$who.txt")"
    record "manifest_p50_ms_$who" "$(awk '$1=="50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms/,"",v); else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$WORK/wrk-$who.txt")"
    record "manifest_p99_ms_$who" "$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) sub(/ms/,"",v); else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$WORK/wrk-$who.txt")"
done

# ---- 3. monolithic push (before the pulls, which reuse the first pushed blob) --------------------
log "generating $RUNS random ${BLOB_MIB} MiB blobs"
BIG=()
BIG_DIGEST=()
for i in $(seq "$RUNS"); do
    f=$WORK/blobs/big$i
    head -c "$((BLOB_MIB * 1048576))" /dev/urandom >"$f"
    BIG+=("$f")
    BIG_DIGEST+=("$(sha "$f")")
done
sync
# The two servers take turns (alternating who goes first) so drift in machine load hits both.
order() { if (($1 % 2)); then echo dist ours; else echo ours dist; fi; }
declare -A PUSH_TIMES=([ours]="" [dist]="")
for i in $(seq 0 $((RUNS - 1))); do
    for who in $(order "$i"); do
        url_var=${who^^}_URL
        t=$(push_blob "${!url_var}" bench/big "${BIG[$i]}" "${BIG_DIGEST[$i]}")
        log "push ${BLOB_MIB} MiB ($who) run $((i + 1)): ${t}s"
        PUSH_TIMES[$who]+="$t "
        sync  # don't let one run's writeback land in the next one
    done
done
for who in ours dist; do
    read -ra times <<<"${PUSH_TIMES[$who]}"
    record "push_s_runs_$who" "$(IFS=,; echo "${times[*]}")"
    record "push_s_$who" "$(median "${times[@]}")"
done

# The floor under any durable push on this disk: writing the same bytes straight to the disk
# (O_DIRECT, 4 MiB writes, then fsync), with no network, hashing or page cache involved.
floor=()
for i in $(seq 0 $((RUNS - 1))); do
    t0=$(now_ns)
    dd if="${BIG[$i]}" of="$WORK/blobs/floor$i" bs=4M oflag=direct conv=fsync status=none 2>/dev/null ||
        dd if="${BIG[$i]}" of="$WORK/blobs/floor$i" bs=4M conv=fsync status=none
    t1=$(now_ns)
    floor+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')")
    sync
done
log "floor (dd ${BLOB_MIB} MiB, O_DIRECT + fsync): ${floor[*]} s"
record floor_dd_fsync_s_runs "$(IFS=,; echo "${floor[*]}")"
record floor_dd_fsync_s "$(median "${floor[@]}")"
rm -f "$WORK"/blobs/floor*

# ---- 2. blob GET, 1 and PARALLEL clients --------------------------------------------------------
PULL_DIGEST=${BIG_DIGEST[0]}
PULL_BYTES=$((BLOB_MIB * 1048576))

# pull_parallel BASE N -> aggregate MiB/s (checks every client got the whole blob)
pull_parallel() {
    local base=$1 n=$2 t0 t1 i pids=()
    t0=$(now_ns)
    for i in $(seq "$n"); do
        curl -sS -o /dev/null -w '%{http_code} %{size_download}\n' ${PULL_FROM:+--interface "$PULL_FROM"} \
            "$base/v2/bench/big/blobs/$PULL_DIGEST" >"$WORK/pull.$i" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || die "a curl client pulling from $base failed"; done
    t1=$(now_ns)
    for i in $(seq "$n"); do
        [[ $(cat "$WORK/pull.$i") == "200 $PULL_BYTES" ]] ||
            die "pull from $base: client $i got '$(cat "$WORK/pull.$i")', expected '200 $PULL_BYTES'"
    done
    awk -v n="$n" -v mib="$BLOB_MIB" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f\n", n * mib / ((b - a) / 1e9)}'
}

pull_parallel "$OURS_URL" 1 >/dev/null  # warm the page cache and both servers
pull_parallel "$DIST_URL" 1 >/dev/null
for n in 1 "$PARALLEL"; do
    declare -A RATES=([ours]="" [dist]="")
    for i in $(seq 0 $((RUNS - 1))); do
        for who in $(order "$i"); do
            url_var=${who^^}_URL
            rate=$(pull_parallel "${!url_var}" "$n")
            RATES[$who]+="$rate "
        done
    done
    for who in ours dist; do
        read -ra rates <<<"${RATES[$who]}"
        log "pull ${BLOB_MIB} MiB x$n ($who): ${rates[*]} MiB/s"
        record "pull${n}_runs_$who" "$(IFS=,; echo "${rates[*]}")"
        record "pull${n}_mibs_$who" "$(median "${rates[@]}")"
    done
done

for who in ours dist; do
    url_var=${who^^}_URL
    pid_var=${who^^}_PID
    # 4. peak RSS during one more PARALLEL-client pull: reset VmHWM (clear_refs 5, Linux >= 4.0)
    # and also sample VmRSS every 20 ms in case the reset is not permitted.
    pid=${!pid_var}
    hwm_reset=0
    if echo 5 >"/proc/$pid/clear_refs" 2>/dev/null; then hwm_reset=1; fi
    ( max=0; while kill -0 "$pid" 2>/dev/null; do
          r=$(awk '$1=="VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
          ((r > max)) && { max=$r; echo "$max" >"$WORK/rss-$who"; }
          sleep 0.02
      done ) &
    sampler=$!
    SAMPLER_PIDS+=("$sampler")
    pull_parallel "${!url_var}" "$PARALLEL" >/dev/null
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampled=$(cat "$WORK/rss-$who" 2>/dev/null || echo 0)
    peak=$sampled
    if ((hwm_reset)); then peak=$(rss_kib "$pid" VmHWM); fi
    ((sampled > peak)) && peak=$sampled
    record "peak_rss_mib_$who" "$(awk -v k="$peak" 'BEGIN {printf "%.1f", k/1024}')"
    record "after_rss_mib_$who" "$(awk -v k="$(rss_kib "$pid" VmRSS)" 'BEGIN {printf "%.1f", k/1024}')"
done
sleep 5
for who in ours dist; do
    pid_var=${who^^}_PID
    record "idle_after_rss_mib_$who" "$(awk -v k="$(rss_kib "${!pid_var}" VmRSS)" 'BEGIN {printf "%.1f", k/1024}')"
done
record_rss_split idle_after

# ---- 1b. manifest PUT: a new small manifest per request, 1, 8 and 32 clients --------------------
# Each answer is durable before its 201 (ours: the metadata flush, shared by the writers waiting
# at the same time; distribution: its filesystem driver's commit). Runs after the pulls and their
# RSS readings: it leaves tens of thousands of manifests in each server's metadata, whose caches
# are not the pulls' memory; the RSS after it is its own row.
# For ours, also what limits it: how idle the machine stayed, and the data disk's writes per PUT
# and busy share (/proc/stat, /proc/diskstats around the run).
export CONFIG_DIGEST CONFIG_SIZE LAYER_DIGEST LAYER_SIZE PUT_REPO=bench/small
DATA_DISK=$(disk_of "$WORK")
for clients in $PUT_CLIENTS; do
    for who in ours dist; do
        url_var=${who^^}_URL
        threads=$((clients < 2 ? 1 : 2))
        log "manifest PUT ($who): wrk -c$clients -t$threads -d$PUT_DURATION"
        read -r cpu0 idle0 < <(cpu_jiffies)
        read -r writes0 busy0 < <(disk_writes "$DATA_DISK")
        t0=$(now_ns)
        wrk -c"$clients" -t"$threads" -d"$PUT_DURATION" -s "$REPO_ROOT/bench/put_manifest.lua" \
            "${!url_var}" >"$WORK/put-$who-$clients.txt"
        t1=$(now_ns)
        read -r cpu1 idle1 < <(cpu_jiffies)
        read -r writes1 busy1 < <(disk_writes "$DATA_DISK")
        if grep -q 'Non-2xx\|Socket errors' "$WORK/put-$who-$clients.txt"; then
            cat "$WORK/put-$who-$clients.txt" >&2
            die "wrk saw errors pushing manifests to $who (above)"
        fi
        record "put${clients}_rps_$who" "$(awk '/^Requests\/sec:/ {print $2}' "$WORK/put-$who-$clients.txt")"
        if [[ $who == ours ]]; then
            requests=$(awk '/requests in/ {print $1}' "$WORK/put-$who-$clients.txt")
            record "put${clients}_idle_pct_ours" "$(awk -v a="$((idle1 - idle0))" -v b="$((cpu1 - cpu0))" 'BEGIN {printf "%.0f", 100 * a / b}')"
            record "put${clients}_disk_writes_per_put_ours" "$(awk -v w="$((writes1 - writes0))" -v n="$requests" 'BEGIN {printf "%.2f", w / n}')"
            record "put${clients}_disk_busy_pct_ours" "$(awk -v ms="$((busy1 - busy0))" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", 100 * ms / ((b - a) / 1e6)}')"
        fi
    done
done

sleep 5
for who in ours dist; do
    pid_var=${who^^}_PID
    record "after_put_rss_mib_$who" "$(awk -v k="$(rss_kib "${!pid_var}" VmRSS)" 'BEGIN {printf "%.1f", k/1024}')"
    record "put_total_$who" "$(cat "$WORK"/put-"$who"-*.txt | awk '/requests in/ {n += $1} END {print n}')"
done

# ---- report -----------------------------------------------------------------------------------
python3 - "$RESULTS" "$BLOB_MIB" "$PARALLEL" "$WRK_CONNS" "$WRK_THREADS" "$WRK_DURATION" "$RUNS" \
    "${BENCH_OUT:-}" "$PUT_CLIENTS" "$PUT_DURATION" <<'PY'
import json, sys
path, blob, par, conns, threads, dur, runs, out, put_clients, put_dur = sys.argv[1:11]
put_clients = put_clients.split()
r = {}
for line in open(path):
    k, v = line.split(None, 1)
    v = v.strip()
    try:
        r[k] = float(v)
    except ValueError:
        r[k] = v

def ratio(a, b):
    return a / b if b else float("nan")

rows = [
    # label, key, unit, target text, check(ours, dist, ratio)
    (f"manifest GET by tag (wrk -c{conns} -t{threads} -d{dur})", "manifest_rps", "req/s",
     ">= 10x", lambda o, d, q: q >= 10),
    (f"blob GET {blob} MiB, 1 client (median of {runs})", "pull1_mibs", "MiB/s",
     ">= 1.2x", lambda o, d, q: q >= 1.2),
    (f"blob GET {blob} MiB, {par} clients, aggregate (median of {runs})", f"pull{par}_mibs", "MiB/s",
     ">= 1.5x", lambda o, d, q: q >= 1.5),
    (f"monolithic push {blob} MiB, POST+PUT (median of {runs})", "push_s", "s",
     "<= 0.28x", lambda o, d, q: q <= 0.28),
    *[(f"manifest PUT, {n} client(s), wrk -d{put_dur}", f"put{n}_rps", "req/s", "-", None)
      for n in put_clients],
    ("RSS idle after start + seeding", "idle_rss_mib", "MiB",
     "ours <= 15 MiB", lambda o, d, q: o <= 15),
    (f"peak RSS during {par}-client pull", "peak_rss_mib", "MiB", "-", None),
    ("RSS 5 s after the last pull", "idle_after_rss_mib", "MiB",
     "ours <= 16 MiB", lambda o, d, q: o <= 16),
    ("manifests pushed by the PUT runs (all clients)", "put_total", "-", "-", None),
    ("RSS 5 s after the manifest PUTs", "after_put_rss_mib", "MiB", "-", None),
]
w = max(len(x[0]) for x in rows)
hdr = f"{'metric':<{w}}  {'unit':<5} {'ours':>10} {'distribution':>13} {'ours/dist':>10}  {'target':<15} met"
print("=== results ===")
print(hdr)
print("-" * len(hdr))
data = {}
for label, key, unit, target, check in rows:
    o, d = r[f"{key}_ours"], r[f"{key}_dist"]
    q = ratio(o, d)
    met = "-" if check is None else ("yes" if check(o, d, q) else "NO")
    f = ".3f" if unit == "s" else ".1f"
    print(f"{label:<{w}}  {unit:<5} {o:>10{f}} {d:>13{f}} {q:>9.2f}x  {target:<15} {met}")
    data[key] = {"ours": o, "distribution": d, "ratio": q, "unit": unit, "target": target, "met": met}
for key, label in (("idle", "idle after start + seeding"), ("idle_after", "5 s after the last pull")):
    if f"{key}_rss_anon_mib_ours" in r:
        print(f"RSS {label}, ours: {r[f'{key}_rss_anon_mib_ours']:.1f} MiB of its own (RssAnon) + "
              f"{r[f'{key}_rss_file_mib_ours']:.1f} MiB of mapped binary and library pages (RssFile)")
one = r.get("put1_rps_ours")
for n in put_clients:
    if n != "1" and one:
        q = r[f"put{n}_rps_ours"] / one
        print(f"manifest PUT scaling, ours: {n} clients = {q:.2f}x one client (target >= 3x: "
              f"{'yes' if q >= 3 else 'NO'})")
        data[f"put{n}_scaling"] = q
for n in put_clients:
    if f"put{n}_idle_pct_ours" in r:
        print(f"manifest PUT, ours, {n} client(s): machine idle {r[f'put{n}_idle_pct_ours']:.0f} %, "
              f"data disk busy {r[f'put{n}_disk_busy_pct_ours']:.0f} %, "
              f"{r[f'put{n}_disk_writes_per_put_ours']:.2f} disk writes per PUT")
floor = r.get("floor_dd_fsync_s")
if floor:
    print(f"\ndisk floor: dd of the same {blob} MiB with O_DIRECT + fsync on the data dir's disk = "
          f"{floor:.3f} s (median of {runs}). That is roughly this disk's sequential write time, "
          f"which a durable push can hardly beat: the best push ratio it leaves is about "
          f"{floor / r['push_s_dist']:.2f}x")
print()
print("raw:")
for k in sorted(r):
    print(f"  {k} = {r[k]}")
if out:
    with open(out, "w") as f:
        json.dump({"summary": data, "raw": r}, f, indent=2)
    print(f"\nwrote {out}")
PY
