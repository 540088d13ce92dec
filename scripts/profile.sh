#!/usr/bin/env bash
# Where Envoy spends its CPU with the module: `perf record -g` of the Envoy
# process while redis-benchmark drives one command through it.
#
#   scripts/profile.sh [--command get|set] [--pipeline N] [--clients N]
#                      [--seconds S] [--concurrency N] [--port P] [--out DIR]
#                      [--builtin]
#
# Starts a 3-master/3-replica loopback cluster (ports P+1 .. P+6, default
# P = 7400) and Envoy with the release build of the module on P
# (--concurrency 1 by default, admin on P+90), preloads 100,000 keys, runs
# redis-benchmark (-c 50 -P 1 -d 64 by default) and records the Envoy process
# for S seconds (default 10) once the load is steady. Prints the share of
# samples per thread, per binary and the top symbols, and Envoy's CPU per
# command over the recording. --builtin profiles Envoy's built-in
# redis_proxy (+ envoy.clusters.redis) instead, in the same binary. Needs `perf` (linux-perf / linux-tools);
# everything else comes from scripts/install.sh. Stops only what it started.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
COMMAND=get
PIPELINE=1
CLIENTS=50
SECONDS_=10
CONCURRENCY=1
PORT=7400
OUT="$repo/target/profile"
BUILTIN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --command) COMMAND="$2"; shift 2 ;;
        --pipeline) PIPELINE="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --builtin) BUILTIN=1; shift ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BENCH_NAME=profile
# shellcheck source=scripts/bench-lib.sh
source "$here/bench-lib.sh"
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
command -v redis-benchmark >/dev/null || die "redis-benchmark missing: run scripts/install.sh"

bash "$here/install.sh" >/dev/null
export ENVOY_BIN="${ENVOY_BIN:-$(bash "$here/envoy-bin.sh" "${ENVOY_VERSION:-1.40.0}")}"
log "building the module (release)"
(cd "$repo" && cargo build --release --quiet)

rm -rf "$OUT"
mkdir -p "$OUT"
CLUSTER=(--port $((PORT + 1)) --dir "$OUT/cluster")
ENVOY_DIR="$OUT/envoy"
cleanup() {
    ENVOY_RUN_DIR="$ENVOY_DIR" bash "$here/run-envoy.sh" stop >/dev/null 2>&1 || true
    bash "$here/cluster.sh" stop "${CLUSTER[@]}" >/dev/null 2>&1 || true
}
trap cleanup EXIT
log "cluster on $((PORT + 1))-$((PORT + 6))"
bash "$here/cluster.sh" start "${CLUSTER[@]}" >/dev/null

SEEDS=("127.0.0.1:$((PORT + 1))" "127.0.0.1:$((PORT + 2))" "127.0.0.1:$((PORT + 3))")
if [ "$BUILTIN" = 1 ]; then
    builtin_config "$PORT" $((PORT + 90)) "${SEEDS[@]}" >"$OUT/envoy.yaml"
else
    module_config "$PORT" $((PORT + 90)) "${SEEDS[@]}" >"$OUT/envoy.yaml"
fi
ENVOY_RUN_DIR="$ENVOY_DIR" ENVOY_LOG_LEVEL=warning \
    bash "$here/run-envoy.sh" start "$OUT/envoy.yaml" -- --concurrency "$CONCURRENCY" >/dev/null
pid="$(cat "$ENVOY_DIR/envoy.pid")"

log "preloading 100000 keys"
redis-benchmark -p "$PORT" -t set -n 100000 -r 100000 -d 64 -c 50 -q >/dev/null 2>&1
log "redis-benchmark -t $COMMAND -c $CLIENTS -P $PIPELINE; perf record for ${SECONDS_}s"
redis-benchmark -p "$PORT" -t "$COMMAND" -n 100000000 -r 100000 -d 64 -c "$CLIENTS" \
    -P "$PIPELINE" --csv >/dev/null 2>&1 &
bench=$!
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
calls() { # the command's calls, summed over the nodes
    local p
    for p in $(seq $((PORT + 1)) $((PORT + 6))); do
        redis-cli -p "$p" info commandstats 2>/dev/null |
            awk -F'[:=,]' -v c="cmdstat_$COMMAND" '$1 == c { print $3 }'
    done | awk '{ n += $1 } END { print n + 0 }'
}
t0="$(ticks)"
n0="$(calls)"
perf record -e cpu-clock -g -p "$pid" -o "$OUT/perf.data" -- sleep "$SECONDS_" >/dev/null 2>&1
t1="$(ticks)"
n1="$(calls)"
kill "$bench" 2>/dev/null || true
wait "$bench" 2>/dev/null || true

hz="$(getconf CLK_TCK)"
report() { # SORT LINES
    perf report -i "$OUT/perf.data" --no-children -g none --stdio --sort "$1" >"$OUT/by-$1.txt" 2>/dev/null || true
    # sed, not head: reading all of grep's output spares it a SIGPIPE.
    grep -E '^ +[0-9]' "$OUT/by-$1.txt" | sed -E -n "1,$2{s/ +- +- *$//;s/ +$//;p}" || true
}
{
    what="module $(git -C "$repo" rev-parse --short HEAD)"
    [ "$BUILTIN" = 1 ] && what="built-in redis_proxy"
    echo "Envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1), $what, --concurrency $CONCURRENCY, redis-benchmark -t $COMMAND -c $CLIENTS -P $PIPELINE, $(date -u '+%Y-%m-%d %H:%M UTC')"
    if [ -n "$n0" ] && [ -n "$n1" ] && [ "$n1" -gt "$n0" ]; then
        awk -v t=$((t1 - t0)) -v n=$((n1 - n0)) -v hz="$hz" \
            'BEGIN { printf "Envoy CPU %.1f us per command over %d commands (counted on the nodes)\n", t / hz * 1e6 / n, n }'
    fi
    echo
    echo "## samples per thread"
    report comm 8
    echo
    echo "## samples per binary"
    report dso 8
    echo
    echo "## top symbols"
    report symbol 25
} | tee "$OUT/report.txt"
log "perf.data and report.txt in $OUT"
