# shellcheck shell=bash
# bench/lib.sh — the helpers every benchmark script shares; sourced, never run.
#
# Set BENCH_NAME (the prefix of log lines) before sourcing. Results are "key value" lines in
# $RESULTS, which the sourcing script creates.

log() { echo "${BENCH_NAME:-bench}: $*" >&2; }
die() { echo "${BENCH_NAME:-bench}: error: $*" >&2; exit 1; }

# require_tools HINT TOOL... -> dies naming every missing tool, with HINT on how to install them
require_tools() {
    local hint=$1 missing=() tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [[ -z ${SKIP_BUILD:-} ]] && ! command -v cargo >/dev/null 2>&1; then missing+=(cargo); fi
    ((${#missing[@]} == 0)) || die "missing tool(s): ${missing[*]}
  $hint
  cargo: https://rustup.rs (or set SKIP_BUILD=1 with a built target/ship/connected-registry)"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready NAME URL PID LOGFILE -> returns once URL/v2/ answers (10 ms steps, 30 s at most);
# dies with the log's tail if PID exits first or the time runs out
wait_ready() {
    local name=$1 url=$2 pid=$3 logf=$4
    for _ in $(seq 3000); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logf" >&2 || true
            die "$name exited during start-up (log above)"
        fi
        curl -sf -o /dev/null "$url/v2/" && return 0
        sleep 0.01
    done
    tail -n 20 "$logf" >&2 || true
    die "$name did not answer $url/v2/ within 30 s"
}

# stop_pid PID -> SIGTERM, up to 30 s to exit (a node flushes its metadata), then SIGKILL; reaps
# it if it is our child
stop_pid() {
    local pid=$1
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

record() { echo "$1 $2" >>"$RESULTS"; }  # key value
now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }  # from to (ns)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# cpu_jiffies -> "total idle" over all CPUs since boot (idle counts iowait too)
cpu_jiffies() { awk '$1=="cpu" {t=0; for (i=2; i<=NF; i++) t+=$i; print t, $5+$6}' /proc/stat; }
# disk_of DIR -> the block device (diskstats name) DIR is on
disk_of() { basename "$(df --output=source "$1" | tail -1)"; }
# disk_writes DEV -> "writes completed, ms spent doing I/O" of DEV since boot
disk_writes() { awk -v d="$1" '$3==d {print $8, $13}' /proc/diskstats; }
# rss_kib PID [FIELD] -> a /proc/PID/status memory field in KiB (VmRSS unless FIELD says)
rss_kib() { awk -v k="${2:-VmRSS}:" '$1==k {print $2}' "/proc/$1/status"; }
