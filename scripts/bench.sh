#!/usr/bin/env bash
# Benchmark: Redis Cluster direct vs Envoy's built-in redis_proxy vs our module.
#
#   scripts/bench.sh                 full run (5 rounds, about 12-14 minutes on 2 cores)
#   scripts/bench.sh --quick         smoke run (1 round, 1/4 of the requests, about 1 minute)
#   scripts/bench.sh --rounds N      number of interleaved rounds (default 5; 1 with --quick)
#   scripts/bench.sh --port P        first port used (default 7301, or $BENCH_PORT)
#   --targets A,B,C,D   which targets run (default A,B,C; D below)
#   --commands GET,SET  which commands (default GET,SET,MSET,MGET,MSET1,MGET1)
#   --pipelines 1,16    --concurrency 1,2    --clients 50    restrict the matrix
#   --latency GET,SET   the one-client latency cells (-c 1 -P 1; default
#                       GET,SET; "none" skips them)
#   --module-d DIR      target D: the libenvoy_redis_cluster.so in DIR (another
#                       build of the module, to compare a change with C)
#
# One loopback Redis Cluster (3 masters, 3 replicas, ports P..P+5, cluster bus
# P+50..P+55) and, in front of it, four Envoys started from the same binary
# (scripts/envoy-bin.sh, ENVOY_VERSION, default 1.40.0):
#
#   A  direct    redis-benchmark --cluster against the cluster itself (the limit)
#   B  built-in  envoy.filters.network.redis_proxy + envoy.clusters.redis
#                (--concurrency 1 on P+10, --concurrency 2 on P+11)
#   C  module    envoy.filters.network.dynamic_modules + target/release/libenvoy_redis_cluster.so
#                (--concurrency 1 on P+12, --concurrency 2 on P+13)
#   D  module    as C, but the .so in --module-d DIR, only with --targets ...D
#                (--concurrency 1 on P+14, --concurrency 2 on P+15)
#
# Both proxies use the same settings: op_timeout 5s, enable_redirection,
# enable_hashtagging, read_policy MASTER, cluster refresh 5s / timeout 3s.
# Admin interfaces are on P+20..P+23.
#
# Matrix: GET, SET, MSET and MGET of 10 keys (cross-slot, and for B and C
# also single-slot) x pipeline (-P) 1 and 16, with 50 clients (-c 50) and
# 64-byte values. Each round runs every cell once, targets interleaved (A,
# B c1, C c1, B c2, C c2 for each command/pipeline), so slow drift of the
# machine hits every target alike. Each round ends with the latency cells:
# GET and SET with one client (-c 1 -P 1), p50 and p99 as redis-benchmark
# reports them. The table gives the median and the min-max
# spread over the rounds. A proxy that answers a probe MSET/MGET with an error
# (our module: CROSSSLOT for cross-slot ones until issue #4) gets "n/a" there.
#
# Keyspaces (all preloaded, so every GET/MGET hits; checked per cell through
# keyspace_hits/keyspace_misses of the masters):
#   B, C:  key:000000000000 .. key:000000099999 (redis-benchmark -r 100000
#          __rand_int__), spread over all 16384 slots. MSET/MGET: 10 random
#          keys of it per command, so nearly always 10 slots on 3 masters.
#   A:     redis-benchmark --cluster replaces {tag} with one fixed hash tag per
#          master, so its keyspace is key:{TAG}:000000000000 .. 099999 for each
#          of the 3 masters (300000 keys, one slot per master). Keys without a
#          tag cannot be used with --cluster (MOVED makes it exit). Its
#          MSET/MGET are therefore single-slot: a cluster-aware client's best
#          case, not the same work as the proxies' cross-slot MSET/MGET.
#   1 slot: for the "1 slot" rows B and C send MSET/MGET of 10 random keys of
#          the first master's A keyspace (key:{TAG}:...): the same keys as A,
#          but all on one master.
#
# For B and C it also records Envoy's CPU time per command (utime+stime delta
# of /proc/PID/stat over the cell / requests) and its VmRSS after the cell.
# For every cell it records how much CPU processes it did not start used
# meanwhile (other sessions' builds and tests skew a 2-core benchmark).
#
# Output: target/bench/results.md (printed at the end), raw numbers in
# target/bench/raw.tsv, logs and configs in target/bench/run/.
# It is a benchmark, not a test: nothing is asserted about timings. It stops
# every process it started (by PID) when it exits, also on Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

ORIG_ARGS="$*"
ROUNDS=""
QUICK=0
BASE_PORT="${BENCH_PORT:-7301}"
TARGETS_ARG="A,B,C"
COMMANDS_ARG="GET,SET,MSET,MGET,MSET1,MGET1"
PIPELINES_ARG="1,16"
CONCURRENCY_ARG="1,2"
CLIENTS=50
LATENCY_ARG="GET,SET"
MODULE_D_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --port) BASE_PORT="$2"; shift 2 ;;
        --targets) TARGETS_ARG="$2"; shift 2 ;;
        --commands) COMMANDS_ARG="$2"; shift 2 ;;
        --pipelines) PIPELINES_ARG="$2"; shift 2 ;;
        --concurrency) CONCURRENCY_ARG="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --latency) LATENCY_ARG="$2"; shift 2 ;;
        --module-d) MODULE_D_DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$ROUNDS" ]; then
    if [ "$QUICK" -eq 1 ]; then ROUNDS=1; else ROUNDS=5; fi
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive integer" >&2; exit 2; }

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
OUT="$repo/target/bench"
RUN="$OUT/run"
RAW="$OUT/raw.tsv"
RESULTS="$OUT/results.md"
CLUSTER_DIR_BENCH="$RUN/cluster"

DATA_SIZE=64
KEYSPACE=100000
# 64-byte values: the preload writes P..P, the SET/MSET cells write v..v.
PRELOAD_VALUE="$(printf 'p%.0s' $(seq "$DATA_SIZE"))"
VALUE="$(printf 'v%.0s' $(seq "$DATA_SIZE"))"
# MSET/MGET: 10 random keys, so ~10 slots on all 3 masters; MSET1/MGET1: 10
# random keys under one hash tag (one slot), for B and C only (A's MSET/MGET
# are single-slot anyway, see above).
IFS=', ' read -r -a TARGETS <<<"$TARGETS_ARG"
IFS=', ' read -r -a COMMANDS <<<"$COMMANDS_ARG"
IFS=', ' read -r -a PIPELINES <<<"$PIPELINES_ARG"
IFS=', ' read -r -a CONCURRENCIES <<<"$CONCURRENCY_ARG"
LATENCY_CMDS=()
if [ "$LATENCY_ARG" != none ]; then IFS=', ' read -r -a LATENCY_CMDS <<<"$LATENCY_ARG"; fi
for x in "${LATENCY_CMDS[@]}"; do
    case "$x" in GET | SET) ;; *) echo "latency cells are GET and/or SET, not $x" >&2; exit 2 ;; esac
done
PROXIES=()
RUN_A=0
for t in "${TARGETS[@]}"; do
    case "$t" in
        A) RUN_A=1 ;;
        B | C | D) PROXIES+=("$t") ;;
        *) echo "unknown target $t (A, B, C or D)" >&2; exit 2 ;;
    esac
done
for x in "${COMMANDS[@]}"; do
    case "$x" in GET | SET | MSET | MGET | MSET1 | MGET1) ;; *) echo "unknown command $x" >&2; exit 2 ;; esac
done
for x in "${PIPELINES[@]}"; do [[ "$x" =~ ^[1-9][0-9]*$ ]] || { echo "bad pipeline $x" >&2; exit 2; }; done
for x in "${CONCURRENCIES[@]}"; do [[ "$x" =~ ^[12]$ ]] || { echo "concurrency is 1 or 2, not $x" >&2; exit 2; }; done
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "--clients needs a positive integer" >&2; exit 2; }
MULTI_KEYS=10

# Requests per cell: sized so that a cell takes about 1-2.5 s here.
requests_for() { # CMD PIPELINE
    local n
    case "$1:$2" in
        GET:1 | SET:1) n=64000 ;;
        GET:16 | SET:16) n=400000 ;;
        MSET:1 | MSET1:1) n=32000 ;;
        MGET:1 | MGET1:1) n=40000 ;;
        MSET:16 | MSET1:16) n=56000 ;;
        MGET:16 | MGET1:16) n=80000 ;;
        *:1) n=64000 ;;
        *) n=400000 ;;
    esac
    # Fewer clients wait on each other less but send less at once.
    if [ "$CLIENTS" -lt 10 ] && [ "$2" -eq 1 ]; then n=$((n / 4)); fi
    if [ "$QUICK" -eq 1 ]; then n=$((n / 4)); fi
    echo "$n"
}
# A cell that does not finish within this is killed and reported as a hang.
CELL_TIMEOUT=90

CLUSTER_PORT="$BASE_PORT"
port_of() { # TARGET CONCURRENCY -> listener port
    case "$1:$2" in
        B:1) echo $((BASE_PORT + 10)) ;; B:2) echo $((BASE_PORT + 11)) ;;
        C:1) echo $((BASE_PORT + 12)) ;; C:2) echo $((BASE_PORT + 13)) ;;
        D:1) echo $((BASE_PORT + 14)) ;; D:2) echo $((BASE_PORT + 15)) ;;
    esac
}
admin_of() { echo $(($(port_of "$1" "$2") + 10)); }

# log, die, alive, port_busy, cpu_ticks, rss_kb, module_config, builtin_config, run_child and
# the cleanup on exit (only what this script started, by PID).
BENCH_NAME=bench
# shellcheck source=scripts/bench-lib.sh
source "$here/bench-lib.sh"
declare -A LOG_START=()
bench_traps

# --- prerequisites --------------------------------------------------------------
T0=$(date +%s)
log "installing prerequisites (scripts/install.sh)"
ENVOY_VERSION="$ENVOY_VERSION" bash "$here/install.sh"
command -v redis-benchmark >/dev/null || die "redis-benchmark not found (Debian package redis-tools)"
command -v python3 >/dev/null || die "python3 not found"
log "building the module (cargo build --release)"
(cd "$repo" && cargo build --release --quiet)
MODULE_DIR="$repo/target/release"
[ -f "$MODULE_DIR/libenvoy_redis_cluster.so" ] || die "no $MODULE_DIR/libenvoy_redis_cluster.so after the build"
if [[ " ${PROXIES[*]} " == *" D "* ]]; then
    [ -n "$MODULE_D_DIR" ] || die "target D needs --module-d DIR"
    MODULE_D_DIR="$(cd "$MODULE_D_DIR" && pwd)"
    [ -f "$MODULE_D_DIR/libenvoy_redis_cluster.so" ] || die "no libenvoy_redis_cluster.so in $MODULE_D_DIR"
    [ "$MODULE_D_DIR" != "$MODULE_DIR" ] || die "--module-d is C's own build ($MODULE_DIR)"
fi
ENVOY_BIN="$(bash "$here/envoy-bin.sh" "$ENVOY_VERSION")"
[ -x "$ENVOY_BIN" ] || die "envoy binary not executable: $ENVOY_BIN"
ENVOY_VERSION_STR="$(envoy_version_str "$ENVOY_BIN")"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CLK_TCK="$(getconf CLK_TCK)"
NCPU="$(nproc)"

mkdir -p "$RUN"
rm -f "$RAW" "$RESULTS" "$RUN"/envoy-*.log "$RUN"/bench-*.out

for off in 0 1 2 3 4 5 10 11 12 13 14 15 20 21 22 23 24 25; do
    port_busy $((BASE_PORT + off)) && die "port $((BASE_PORT + off)) is in use (pick another base with --port)"
done

# --- the cluster ------------------------------------------------------------------
log "starting a 3-master/3-replica cluster on ports $CLUSTER_PORT-$((CLUSTER_PORT + 5))"
CLUSTER_STARTED=1
CLUSTER_DIR="$CLUSTER_DIR_BENCH" bash "$here/cluster.sh" start --port "$CLUSTER_PORT"
MASTERS=()
for ((i = 0; i < 6; i++)); do
    p=$((CLUSTER_PORT + i))
    if [ "$(redis-cli -p "$p" role | head -1)" = "master" ]; then MASTERS+=("$p"); fi
done
[ "${#MASTERS[@]}" -eq 3 ] || die "expected 3 masters, found: ${MASTERS[*]}"
for m in "${MASTERS[@]}"; do redis-cli -p "$m" flushall >/dev/null; done

# --- preload ------------------------------------------------------------------------
# SET commands for PREFIX000000000000 .. PREFIX<count-1>, in RESP, for redis-cli --pipe.
resp_sets() { # PREFIX COUNT VALUE
    python3 - "$@" <<'PY'
import sys
prefix, count, value = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3].encode()
out = []
for i in range(count):
    key = prefix + b"%012d" % i
    out.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
sys.stdout.buffer.write(b"".join(out))
PY
}

# The hash tag redis-benchmark --cluster puts into {tag} for each master: ask
# it to SET one probe key per client and look where they landed.
log "finding the hash tags redis-benchmark --cluster uses"
redis-benchmark --cluster -h 127.0.0.1 -p "$CLUSTER_PORT" -n 300 -c 30 -r 1 --csv \
    SET 'probe:{tag}:__rand_int__' x >"$RUN/probe.out" 2>&1 || { cat "$RUN/probe.out" >&2; die "probe run failed"; }
declare -A TAG_PREFIX=()
for m in "${MASTERS[@]}"; do
    mapfile -t probes < <(redis-cli -p "$m" --scan --pattern 'probe:*')
    [ "${#probes[@]}" -eq 1 ] || die "expected one probe key on master $m, found ${#probes[@]}: ${probes[*]}"
    k="${probes[0]}"
    t="${k#probe:}"
    TAG_PREFIX[$m]="key:${t%:000000000000}:"
    redis-cli -p "$m" del "$k" >/dev/null
done

log "preloading $KEYSPACE keys key:NNNNNNNNNNNN (B, C) and $KEYSPACE keys per master key:{TAG}:NNNNNNNNNNNN (A), $DATA_SIZE-byte values"
resp_sets "key:" "$KEYSPACE" "$PRELOAD_VALUE" >"$RUN/preload-plain.resp"
for m in "${MASTERS[@]}"; do
    # Every master gets every plain key and keeps the ones of its slots (the
    # others are answered MOVED and dropped).
    redis-cli -p "$m" --pipe <"$RUN/preload-plain.resp" >"$RUN/preload-$m.out" 2>&1 || true
    resp_sets "${TAG_PREFIX[$m]}" "$KEYSPACE" "$PRELOAD_VALUE" | redis-cli -p "$m" --pipe >>"$RUN/preload-$m.out" 2>&1 || true
done
rm -f "$RUN/preload-plain.resp"
dbsize_total() {
    local m total=0
    for m in "${MASTERS[@]}"; do total=$((total + $(redis-cli -p "$m" dbsize))); done
    echo "$total"
}
EXPECTED_KEYS=$((KEYSPACE * 4))
got="$(dbsize_total)"
[ "$got" -eq "$EXPECTED_KEYS" ] || die "preload: $got keys in the cluster, expected $EXPECTED_KEYS (see $RUN/preload-*.out)"
log "preloaded: $got keys"

# --- Envoy configs -------------------------------------------------------------------
SEEDS=("127.0.0.1:$CLUSTER_PORT" "127.0.0.1:$((CLUSTER_PORT + 1))" "127.0.0.1:$((CLUSTER_PORT + 2))")


start_envoy() { # TARGET CONCURRENCY
    local t="$1" c="$2" port admin cfg logf pid n v dir="$MODULE_DIR"
    port="$(port_of "$t" "$c")"
    admin="$(admin_of "$t" "$c")"
    cfg="$RUN/envoy-$t-c$c.yaml"
    logf="$RUN/envoy-$t-c$c.log"
    if [ "$t" = B ]; then builtin_config "$port" "$admin" "${SEEDS[@]}" >"$cfg"; else module_config "$port" "$admin" "${SEEDS[@]}" >"$cfg"; fi
    if [ "$t" = D ]; then dir="$MODULE_D_DIR"; fi
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$dir" \
        "$ENVOY_BIN" -c "$cfg" --disable-hot-restart --concurrency "$c" -l warning \
        >"$logf" 2>&1 </dev/null &
    pid=$!
    ENVOY_PID["$t$c"]=$pid
    # Ready when a preloaded key reads back through it (the built-in proxy
    # first has to learn the slot map).
    for ((n = 0; n < 300; n++)); do
        alive "$pid" || { tail -n 30 "$logf" >&2; die "envoy $t --concurrency $c exited during start-up (log $logf)"; }
        v="$(redis-cli -p "$port" get key:000000000000 2>/dev/null || true)"
        [ "$v" = "$PRELOAD_VALUE" ] && break
        sleep 0.1
    done
    [ "$v" = "$PRELOAD_VALUE" ] || die "envoy $t --concurrency $c does not serve GET after 30 s (log $logf; last reply: $v)"
    LOG_START["$t$c"]="$(wc -l <"$logf")"
    log "envoy $t --concurrency $c: pid $pid, port $port, admin $admin"
}

# --- benchmark commands ---------------------------------------------------------------
# The redis-benchmark arguments of a command for a target: A gets {tag} keys,
# MSET1/MGET1 the keys of the first master's tag (preloaded for A).
cmd_args() { # TARGET CMD
    local key i
    if [ "$1" = A ]; then key='key:{tag}:__rand_int__'; else key='key:__rand_int__'; fi
    case "$2" in MSET1 | MGET1) key="${TAG_PREFIX[${MASTERS[0]}]}__rand_int__" ;; esac
    case "$2" in
        GET) echo GET; echo "$key" ;;
        SET) echo SET; echo "$key"; echo "$VALUE" ;;
        MSET | MSET1) echo MSET; for ((i = 0; i < MULTI_KEYS; i++)); do echo "$key"; echo "$VALUE"; done ;;
        MGET | MGET1) echo MGET; for ((i = 0; i < MULTI_KEYS; i++)); do echo "$key"; done ;;
    esac
}

# "busy steal own" in clock ticks: the machine's user+nice+system and steal
# time (/proc/stat), and the CPU time of everything this run started (the
# redis-servers, the Envoys, and this shell with its waited-for children, which
# include redis-benchmark). busy - own is what other processes used.
OWN_PIDS=()
cpu_snapshot() {
    local busy steal own files=() p
    read -r busy steal < <(awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat)
    for p in "${OWN_PIDS[@]}" "$$"; do
        if [ -r "/proc/$p/stat" ]; then files+=("/proc/$p/stat"); fi
    done
    own="$(cat "${files[@]}" 2>/dev/null | sed 's/.*) //' | awk '{s += $12 + $13} END {print s + 0}')"
    own=$((own + $(sed 's/.*) //' "/proc/$$/stat" | awk '{print $14 + $15}')))
    echo "$busy $steal $own"
}
hits_misses() { # -> "hits misses" summed over the masters
    local m h=0 x=0 a b
    for m in "${MASTERS[@]}"; do
        read -r a b < <(redis-cli -p "$m" info stats | tr -d '\r' |
            awk -F: '/^keyspace_hits:/ {h=$2} /^keyspace_misses:/ {m=$2} END {print h, m}')
        h=$((h + a)); x=$((x + b))
    done
    echo "$h $x"
}

# Can a proxy do a 10-key MSET/MGET (cross-slot for MSET/MGET, one slot for
# MSET1/MGET1)? Prints "ok" or the first line of what it answered.
probe_multi() { # PORT CMD
    local cmd="${2%1}" prefix="key:" args=() i reply
    if [ "$2" != "$cmd" ]; then prefix="${TAG_PREFIX[${MASTERS[0]}]}"; fi
    args=("$cmd")
    for ((i = 1; i <= MULTI_KEYS; i++)); do
        args+=("$(printf '%s%012d' "$prefix" $((i * 7919)))")
        if [ "$cmd" = MSET ]; then args+=("$PRELOAD_VALUE"); fi
    done
    reply="$(redis-cli -p "$1" "${args[@]}" 2>&1 | tr -d '\r')" || true
    if [ "$cmd" = MSET ] && [ "$reply" = OK ]; then echo ok; return; fi
    if [ "$cmd" = MGET ] && [ "$(printf '%s\n' "$reply" | grep -cxE "$PRELOAD_VALUE|$VALUE")" -eq "$MULTI_KEYS" ]; then echo ok; return; fi
    printf '%s\n' "$reply" | head -1
}

printf 'round\tkind\tclients\ttarget\tconc\tcmd\tpipeline\trequests\tstatus\tops\tp50_ms\tp99_ms\twall_s\tcpu_us_per_cmd\trss_kb\thits\tmisses\tother_cpu_pct\tsteal_pct\tdetail\n' >"$RAW"

declare -A SKIP=()
run_cell() { # ROUND TARGET CONC CMD PIPELINE [latency]
    local r="$1" t="$2" c="$3" cmd="$4" P="$5" kind="${6:-main}" n port pid out args=() cl=() t0 t1 rc=0
    local status=ok ops="" p50="" p99="" wall="" clients="$CLIENTS" cpu="" rss="" h0 x0 h1 x1 cpu0 cpu1 detail=""
    local busy0 steal0 own0 busy1 steal1 own1 other="" steal=""
    n="$(requests_for "$cmd" "$P")"
    # One client, one command at a time: latency, not throughput.
    if [ "$kind" = latency ]; then clients=1; n=$((QUICK ? 2000 : 8000)); fi
    mapfile -t args < <(cmd_args "$t" "$cmd")
    if [ "$t" = A ]; then
        port="$CLUSTER_PORT"; pid=""; cl=(--cluster)
    else
        port="$(port_of "$t" "$c")"; pid="${ENVOY_PID[$t$c]}"
    fi
    out="$RUN/bench-$kind-$t-c$c-$cmd-P$P-r$r.out"
    if [ -n "${SKIP[$t$c$cmd]:-}" ]; then
        status=skipped; detail="${SKIP[$t$c$cmd]}"
    elif [ -n "$pid" ] && ! alive "$pid"; then
        status=error; detail="envoy exited before this cell"
    else
        read -r h0 x0 < <(hits_misses)
        if [ -n "$pid" ]; then cpu0="$(cpu_ticks "$pid")"; fi
        read -r busy0 steal0 own0 < <(cpu_snapshot)
        t0="$(date +%s.%N)"
        run_child timeout "$CELL_TIMEOUT" redis-benchmark "${cl[@]}" -h 127.0.0.1 -p "$port" \
            -n "$n" -c "$clients" -P "$P" -d "$DATA_SIZE" -r "$KEYSPACE" --csv "${args[@]}" \
            >"$out" 2>&1 </dev/null || rc=$?
        t1="$(date +%s.%N)"
        read -r busy1 steal1 own1 < <(cpu_snapshot)
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
        # CPU used by processes this run did not start, and steal, in % of all CPUs.
        read -r other steal < <(awk -v b=$((busy1 - busy0)) -v o=$((own1 - own0)) -v st=$((steal1 - steal0)) \
            -v w="$wall" -v hz="$CLK_TCK" -v ncpu="$NCPU" 'BEGIN {
                cap = w * hz * ncpu; if (cap <= 0) cap = 1
                x = (b - o) / cap * 100; if (x < 0) x = 0
                printf "%.1f %.1f\n", x, st / cap * 100 }')
        read -r h1 x1 < <(hits_misses)
        if [ -n "$pid" ]; then
            if alive "$pid"; then
                cpu1="$(cpu_ticks "$pid")"
                cpu="$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')"
                rss="$(rss_kb "$pid")"
            else
                detail="envoy exited during the cell; "
            fi
        fi
        local row
        row="$(grep '^"[A-Z]' "$out" | tail -1 || true)"
        if [ "$rc" -eq 0 ] && [ -n "$row" ]; then
            ops="$(printf '%s\n' "$row" | awk -F'"' '{print $4}')"
            p50="$(printf '%s\n' "$row" | awk -F'"' '{print $10}')"
            p99="$(printf '%s\n' "$row" | awk -F'"' '{print $14}')"
        elif [ "$rc" -eq 124 ]; then
            status=error; detail+="no result within ${CELL_TIMEOUT}s (hang?)"
            SKIP[$t$c$cmd]="hung in an earlier round"
        else
            status=error
            detail+="$(tr '\r' '\n' <"$out" | grep -v '^"test"' | grep -m1 -i 'error\|refused\|reset' || tail -n1 "$out" | tr -d '\r')"
            if [ -z "$detail" ]; then detail="redis-benchmark exit $rc"; fi
        fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$r" "$kind" "$clients" "$t" "$c" "$cmd" "$P" "$n" "$status" "$ops" "$p50" "$p99" "$wall" "$cpu" "$rss" \
        "$((${h1:-0} - ${h0:-0}))" "$((${x1:-0} - ${x0:-0}))" "$other" "$steal" \
        "$(printf '%s' "$detail" | tr '\t\n' '  ')" >>"$RAW"
    if [ "$status" = ok ]; then
        log "r$r $t${pid:+ c$c} $cmd -c $clients -P $P: $ops ops/s${p99:+, p50 $p50 p99 $p99 ms}${cpu:+, $cpu us/cmd}${rss:+, RSS $((rss / 1024)) MiB} (${wall}s, other processes ${other}% CPU)"
    else
        log "r$r $t${pid:+ c$c} $cmd -c $clients -P $P: $status: $detail"
    fi
}

# --- start the proxies, check what they can do ------------------------------------------
for c in "${CONCURRENCIES[@]}"; do
    for t in "${PROXIES[@]}"; do start_envoy "$t" "$c"; done
done
mapfile -t OWN_PIDS < <(awk '{print $2}' "$CLUSTER_DIR_BENCH/pids")
OWN_PIDS+=("${ENVOY_PID[@]}")

for t in "${PROXIES[@]}"; do
    for c in "${CONCURRENCIES[@]}"; do
        for cmd in MSET MGET MSET1 MGET1; do
            res="$(probe_multi "$(port_of "$t" "$c")" "$cmd")"
            if [ "$res" != ok ]; then
                if [[ "$res" == *CROSSSLOT* ]]; then
                    SKIP[$t$c$cmd]="n/a (CROSSSLOT until issue #4)"
                else
                    SKIP[$t$c$cmd]="n/a (${cmd%1} answered: ${res:0:80})"
                fi
                log "$t --concurrency $c: 10-key $cmd answered '$res': cell skipped"
            fi
        done
    done
done
: >"$RUN/skipped.tsv"
for k in "${!SKIP[@]}"; do printf '%s\t%s\n' "$k" "${SKIP[$k]}" >>"$RUN/skipped.tsv"; done

# Warm-up, not recorded: connections, allocator, slot maps.
log "warm-up"
for t in $([ "$RUN_A" -eq 1 ] && echo A) "${PROXIES[@]}"; do
    for c in "${CONCURRENCIES[@]}"; do
        if [ "$t" = A ]; then port="$CLUSTER_PORT"; cl=(--cluster); else port="$(port_of "$t" "$c")"; cl=(); fi
        mapfile -t args < <(cmd_args "$t" GET)
        run_child timeout "$CELL_TIMEOUT" redis-benchmark "${cl[@]}" -h 127.0.0.1 -p "$port" -n 20000 -c "$CLIENTS" \
            -P 16 -r "$KEYSPACE" --csv "${args[@]}" >"$RUN/warmup-$t-c$c.out" 2>&1 </dev/null ||
            log "warm-up of $t c$c failed: $(tr '\r' '\n' <"$RUN/warmup-$t-c$c.out" | tail -n1)"
        if [ "$t" = A ]; then break; fi
    done
done

# --- the rounds ------------------------------------------------------------------------------
TSTART=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS"
    for cmd in "${COMMANDS[@]}"; do
        for P in "${PIPELINES[@]}"; do
            if [ "$RUN_A" -eq 1 ]; then
                case "$cmd" in MSET1 | MGET1) ;; *) run_cell "$r" A 0 "$cmd" "$P" ;; esac
            fi
            for c in "${CONCURRENCIES[@]}"; do
                for t in "${PROXIES[@]}"; do run_cell "$r" "$t" "$c" "$cmd" "$P"; done
            done
        done
    done
    for cmd in "${LATENCY_CMDS[@]}"; do
        if [ "$RUN_A" -eq 1 ]; then run_cell "$r" A 0 "$cmd" 1 latency; fi
        for c in "${CONCURRENCIES[@]}"; do
            for t in "${PROXIES[@]}"; do run_cell "$r" "$t" "$c" "$cmd" 1 latency; done
        done
    done
done
TEND=$(date +%s)

# --- after the run: sanity checks -----------------------------------------------------------
final_keys="$(dbsize_total)"
# The probes again, through every Envoy still running: do replies still come
# back right after all that load?
post_check=""
for t in "${PROXIES[@]}"; do
    for c in "${CONCURRENCIES[@]}"; do
        alive "${ENVOY_PID[$t$c]}" || continue
        port="$(port_of "$t" "$c")"
        v="$(redis-cli -p "$port" get key:000000000042 2>&1 || true)"
        if [ "${#v}" -ne "$DATA_SIZE" ]; then post_check+="$t c$c GET answered '${v:0:80}'; "; fi
        for cmd in MSET MGET MSET1 MGET1; do
            [ -n "${SKIP[$t$c$cmd]:-}" ] && continue
            res="$(probe_multi "$port" "$cmd")"
            if [ "$res" != ok ]; then post_check+="$t c$c $cmd answered '${res:0:80}'; "; fi
        done
    done
done
export post_check="${post_check:-all right}"
envoy_log_summary=""
for t in "${PROXIES[@]}"; do
    for c in "${CONCURRENCIES[@]}"; do
        pid="${ENVOY_PID[$t$c]}"
        state=running; alive "$pid" || state=EXITED
        lf="$RUN/envoy-$t-c$c.log"
        # Only what it logged after start-up (at -l warning).
        nerr="$(tail -n +$((LOG_START[$t$c] + 1)) "$lf" | grep -c '\]\[\(error\|critical\)\]' || true)"
        nwarn="$(tail -n +$((LOG_START[$t$c] + 1)) "$lf" | grep -c '\]\[warning\]' || true)"
        envoy_log_summary+="$t c$c: $state at the end; after start-up it logged $nerr error/critical and $nwarn warning lines ($lf);"$'\n'
    done
done

# --- the table ------------------------------------------------------------------------------
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
# The module's revision, and whether its sources differ from it.
GIT_REV="$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(cd "$repo" && git status --porcelain -- src Cargo.toml Cargo.lock build.rs 2>/dev/null)" ]; then
    GIT_REV+=" + uncommitted changes in src/"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
export RAW ROUNDS QUICK CLIENTS DATA_SIZE KEYSPACE MULTI_KEYS CPU_MODEL GIT_REV ENVOY_VERSION_STR \
    final_keys EXPECTED_KEYS envoy_log_summary CMDLINE="scripts/bench.sh $ORIG_ARGS"
export MACHINE_LINE="$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($CPU_MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB; Envoy $ENVOY_VERSION_STR; redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2); module $GIT_REV; $ROUNDS round(s)$([ "$QUICK" -eq 1 ] && echo ', --quick'); measuring took $((TEND - TSTART)) s; load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
python3 - <<'PY' >"$RESULTS"
import csv, os, statistics

all_rows = list(csv.DictReader(open(os.environ["RAW"]), delimiter="\t"))
rows = [r for r in all_rows if r["kind"] == "main"]
lat_rows = [r for r in all_rows if r["kind"] == "latency"]
multi = os.environ["MULTI_KEYS"]


def fmt_ops(v):
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_cpu(v):
    return f"{v:.1f}"


def cell(t, c, cmd, P):
    return [r for r in rows if r["target"] == t and r["conc"] == str(c) and r["cmd"] == cmd and r["pipeline"] == str(P)]


def ok_vals(rs, field):
    return [float(r[field]) for r in rs if r["status"] == "ok" and r[field] != ""]


def summary(rs, field, fmt):
    """(median, 'median (min–max)') of the rounds that worked, or (None, '')."""
    vals = ok_vals(rs, field)
    if not vals:
        return None, ""
    med = statistics.median(vals)
    s = fmt(med)
    if len(vals) > 1:
        s += f" ({fmt(min(vals))}–{fmt(max(vals))})"
    return med, s


def status_note(rs):
    bad = [r for r in rs if r["status"] != "ok"]
    if not bad:
        return ""
    detail = bad[0]["detail"] or bad[0]["status"]
    if len(bad) == len(rs):
        return detail
    return f"⚠ {len(bad)}/{len(rs)} rounds failed: {detail}"


def ops_cell(rs):
    med, s = summary(rs, "ops", fmt_ops)
    note = status_note(rs)
    if med is None:
        return None, note or "–"
    return med, s + (f" {note}" if note else "")


def ratio(a, b):
    return f"{a / b:.2f}" if (a and b) else "–"


LABELS = {
    "GET": "GET",
    "SET": "SET",
    "MSET": f"MSET {multi} keys, cross-slot",
    "MGET": f"MGET {multi} keys, cross-slot",
    "MSET1": f"MSET {multi} keys, 1 slot",
    "MGET1": f"MGET {multi} keys, 1 slot",
}

out = []
out.append("# envoy-redis-cluster benchmark")
out.append("")
out.append(f"**Machine:** {os.environ['MACHINE_LINE']}")
out.append("")
out.append(
    f"Command: `{os.environ['CMDLINE'].strip()}`. redis-benchmark, {os.environ['CLIENTS']} clients (`-c {os.environ['CLIENTS']}`), "
    f"{os.environ['DATA_SIZE']}-byte values, keyspace `-r {os.environ['KEYSPACE']}`, all preloaded. "
    "Each cell: median over the rounds (min–max). ops/s = commands per second as redis-benchmark reports them "
    f"(one MSET/MGET of {multi} keys = 1 command). "
    "CPU = Envoy process utime+stime per command, µs (median, min–max). RSS = Envoy VmRSS after the cell, MiB (median). "
    "A = `redis-benchmark --cluster` straight to the masters, no Envoy, so the same numbers in both concurrency rows."
)
out.append("")
out.append("| command | -P | Envoy --concurrency | A direct ops/s | B built-in ops/s | C module ops/s | C/B | C/A "
           "| B CPU µs/cmd | C CPU µs/cmd | CPU C/B | B RSS MiB | C RSS MiB |")
out.append("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
present = {(r["cmd"], r["pipeline"], r["conc"]) for r in rows}
for cmd in ["GET", "SET", "MSET", "MGET", "MSET1", "MGET1"]:
    a_cmd = cmd.rstrip("1")  # A's MSET/MGET are single-slot already
    for P in sorted({int(r["pipeline"]) for r in rows}):
        for c in [1, 2]:
            if (cmd, str(P), str(c)) not in present:
                continue
            a_med, a_s = ops_cell(cell("A", 0, a_cmd, P))
            if cmd in ("MSET", "MGET") and a_med is not None:
                a_s += " †"
            b_med, b_s = ops_cell(cell("B", c, cmd, P))
            c_med, c_s = ops_cell(cell("C", c, cmd, P))
            bcpu_med, bcpu = summary(cell("B", c, cmd, P), "cpu_us_per_cmd", fmt_cpu)
            ccpu_med, ccpu = summary(cell("C", c, cmd, P), "cpu_us_per_cmd", fmt_cpu)

            def rss(rs):
                vals = ok_vals(rs, "rss_kb")
                return f"{statistics.median(vals) / 1024:.0f}" if vals else "–"

            out.append(
                f"| {LABELS[cmd]} | {P} | {c} | {a_s} | {b_s} | {c_s} | {ratio(c_med, b_med)} | {ratio(c_med, a_med)} "
                f"| {bcpu or '–'} | {ccpu or '–'} | {ratio(ccpu_med, bcpu_med)} "
                f"| {rss(cell('B', c, cmd, P))} | {rss(cell('C', c, cmd, P))} |"
            )
out.append("")

if any(r["target"] == "D" for r in rows):
    out.append("D = another build of the module (`--module-d`), interleaved with B and C in the same rounds.")
    out.append("")
    out.append("| command | -P | c | B ops/s | C ops/s | D ops/s | D/B | D/C | B CPU µs/cmd | C CPU µs/cmd "
               "| D CPU µs/cmd | CPU D/B | CPU D/C | C RSS MiB | D RSS MiB |")
    out.append("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
    for cmd in ["GET", "SET", "MSET", "MGET", "MSET1", "MGET1"]:
        for P in sorted({int(r["pipeline"]) for r in rows}):
            for c in [1, 2]:
                if not cell("D", c, cmd, P):
                    continue
                b_med, b_s = ops_cell(cell("B", c, cmd, P))
                c_med, c_s = ops_cell(cell("C", c, cmd, P))
                d_med, d_s = ops_cell(cell("D", c, cmd, P))
                bc, bcs = summary(cell("B", c, cmd, P), "cpu_us_per_cmd", fmt_cpu)
                cc, ccs = summary(cell("C", c, cmd, P), "cpu_us_per_cmd", fmt_cpu)
                dc, dcs = summary(cell("D", c, cmd, P), "cpu_us_per_cmd", fmt_cpu)

                def rss_med(rs):
                    vals = ok_vals(rs, "rss_kb")
                    return f"{statistics.median(vals) / 1024:.0f}" if vals else "–"

                out.append(
                    f"| {LABELS[cmd]} | {P} | {c} | {b_s} | {c_s} | {d_s} | {ratio(d_med, b_med)} | {ratio(d_med, c_med)} "
                    f"| {bcs or '–'} | {ccs or '–'} | {dcs or '–'} | {ratio(dc, bc)} | {ratio(dc, cc)} "
                    f"| {rss_med(cell('C', c, cmd, P))} | {rss_med(cell('D', c, cmd, P))} |"
                )
    out.append("")

if lat_rows:
    out.append("Latency with one client, one command at a time (`-c 1 -P 1`), ms as redis-benchmark reports them: "
               "p50 / p99, median over the rounds (min–max of the p99s).")
    out.append("")
    targets = [t for t in ("A", "B", "C", "D") if any(r["target"] == t for r in lat_rows)]
    out.append("| command | Envoy --concurrency | " + " | ".join(f"{t} p50 / p99 ms" for t in targets) + " |")
    out.append("| --- | --: | " + " | ".join("--:" for _ in targets) + " |")
    for cmd in ("GET", "SET"):
        for c in (1, 2):
            if not any(r["cmd"] == cmd and r["conc"] == str(c) for r in lat_rows):
                continue
            cells = []
            for t in targets:
                rs = [r for r in lat_rows if r["target"] == t and r["cmd"] == cmd and (t == "A" or r["conc"] == str(c))]
                p50, _ = summary(rs, "p50_ms", lambda v: f"{v:.3f}")
                p99, p99_s = summary(rs, "p99_ms", lambda v: f"{v:.3f}")
                note = status_note(rs)
                cells.append("–" if p50 is None else f"{p50:.3f} / {p99_s}" + (f" {note}" if note else ""))
            out.append(f"| {cmd} | {c} | " + " | ".join(cells) + " |")
    out.append("")

# Hit rates of the GET/MGET cells, from the masters' keyspace_hits/misses.
hit_lines = []
for t, name in [("A", "direct"), ("B", "built-in"), ("C", "module"), ("D", "module --module-d")]:
    h = m = 0
    for r in rows:
        if r["target"] == t and r["cmd"].startswith(("GET", "MGET")) and r["status"] == "ok":
            h += int(r["hits"] or 0)
            m += int(r["misses"] or 0)
    if h + m:
        hit_lines.append(f"{t} {name} {100.0 * h / (h + m):.2f}% of {h + m} key reads")
out.append("Notes:")
out.append("")
out.append("- GET/MGET hit rate over all rounds (the masters' keyspace_hits/keyspace_misses during the cells): "
           + "; ".join(hit_lines) + ".")
out.append(
    "- Keys. B and C: GET, SET and the cross-slot MSET/MGET use `key:000000000000`…`key:000000099999` "
    f"(spread over all 16384 slots; an MSET/MGET takes {multi} random keys, so it nearly always spans all 3 masters "
    "and the proxy splits it). A cannot use those keys (`redis-benchmark --cluster` exits on MOVED): it puts one fixed "
    "hash tag per master into `{tag}`, so A uses `key:{TAG}:000000000000`…`099999` on each master (also preloaded) "
    "and its MSET/MGET are single-slot. † = so A's number in a cross-slot row is that single-slot run: the best case "
    "of a cluster-aware client, not the same work. The \"1 slot\" rows give B and C single-slot MSET/MGET too, "
    "with the keys of A's first-master tag: all of that load goes to one master, while A spreads it over three."
)
out.append("- The proxies' settings: op_timeout 5s, enable_redirection, enable_hashtagging, read_policy MASTER, "
           "cluster refresh 5s/3s; the built-in cluster is `envoy.clusters.redis` with `CLUSTER_PROVIDED`, "
           "other redis_proxy settings at their defaults (no request batching).")
others = [(float(r["other_cpu_pct"]), r) for r in all_rows if r["status"] == "ok" and r["other_cpu_pct"] != ""]
if others:
    vals = sorted(v for v, _ in others)
    steals = [float(r["steal_pct"]) for _, r in others if r["steal_pct"] != ""]
    per_target = []
    for t in ("A", "B", "C", "D"):
        tv = [v for v, r in others if r["target"] == t]
        if tv:
            per_target.append(f"{t} {statistics.median(tv):.0f}%")
    busy = [f"r{r['round']} {r['target']}{'' if r['target'] == 'A' else ' c' + r['conc']} {r['cmd']} -c {r['clients']} -P {r['pipeline']} ({v:.0f}%)"
            for v, r in others if v > 10]
    line = (f"- CPU used by processes this run did not start (other sessions' builds and tests, the system) during "
            f"the cells, in % of all CPUs: median {statistics.median(vals):.1f}% (by target: {', '.join(per_target)}), "
            f"max {vals[-1]:.1f}%; steal median {statistics.median(steals) if steals else 0:.1f}%, "
            f"max {max(steals) if steals else 0:.1f}%. ")
    if not busy:
        line += "No cell saw more than 10%."
    elif len(busy) <= 12:
        line += f"Cells that saw more than 10%, to be read with care: " + ", ".join(busy) + "."
    else:
        line += (f"{len(busy)} of {len(others)} cells saw more than 10%: the spreads are wide, the medians and "
                 "especially the CPU µs/cmd columns are the numbers to compare; per cell in raw.tsv (other_cpu_pct).")
    out.append(line)
# Envoy's RSS over the run: after its first and its last cell.
for t, name in (("B", "built-in"), ("C", "module"), ("D", "module --module-d")):
    parts = []
    for c in ("1", "2"):
        rs = [r for r in rows if r["target"] == t and r["conc"] == c and r["status"] == "ok" and r["rss_kb"]]
        if rs:
            parts.append(f"c{c} {int(rs[0]['rss_kb']) / 1024:.0f} → {int(rs[-1]['rss_kb']) / 1024:.0f} MiB")
    if parts:
        out.append(f"- {t} {name} Envoy RSS after its first → last cell: " + ", ".join(parts) + ".")
out.append(f"- After the run, GET and 10-key MSET/MGET through every proxy (replies checked): {os.environ['post_check']}.")
out.append(f"- Keys in the cluster after the run: {os.environ['final_keys']} "
           f"(expected {os.environ['EXPECTED_KEYS']}: the writes only overwrite preloaded keys).")
for line in os.environ["envoy_log_summary"].strip().splitlines():
    out.append(f"- Envoy {line.rstrip(';')}.")
for r in all_rows:
    if r["status"] == "error":
        out.append(f"- Error: round {r['round']} {r['target']} c{r['conc']} {r['cmd']} -c {r['clients']} -P {r['pipeline']}: {r['detail']}")
out.append("- On 2 cores every cell saturates the machine (redis-benchmark + Envoy + 3 busy masters): "
           "compare within one run; Envoy's CPU µs/cmd is steadier than ops/s.")
print("\n".join(out))
PY
cat "$RESULTS"
log "results in $RESULTS, raw numbers in $RAW, logs in $RUN (total $(($(date +%s) - T0)) s)"
