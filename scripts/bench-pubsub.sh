#!/usr/bin/env bash
# Pub/Sub fan-out benchmark (issue #13): many subscribers on one channel, one
# publisher at a fixed rate; delivery latency, losses, delivery rate, and the
# fan-out's CPU and memory, straight to a node versus through the module.
#
#   scripts/bench-pubsub.sh                   10,000 subscribers, 1,000 msg/s, 10 s, 3 rounds
#   --subscribers N     subscriber connections (default 10000)
#   --rate R            PUBLISHes per second (default 1000)
#   --seconds D         how long the publisher publishes (default 10)
#   --rounds K          interleaved rounds (default 3)
#   --targets T,...     direct and/or module (default direct,module)
#   --direct-publisher other,same   where the direct cells' publisher connects:
#                       another master and/or the subscribers' own (default both)
#   --module-publisher proxy,node   where the module cells' publisher connects:
#                       through the proxy and/or straight to a node (default both,
#                       one cell each)
#   --threads T         subscriber threads of the load generator (default 1)
#   --payload-bytes B   PUBLISH payload size (default 64)
#   --port P            first port used (default 7501, or $BENCH_PUBSUB_PORT)
#   --module-dir DIR    the libenvoy_redis_cluster.so in DIR instead of this
#                       tree's target/release (e.g. another branch's build)
#
# One loopback Redis Cluster (3 masters, 3 replicas, ports P..P+5, bus
# P+50..P+55) and, for the module target, one Envoy (scripts/envoy-bin.sh,
# ENVOY_VERSION, default 1.40.0) with target/release/libenvoy_redis_cluster.so
# and the settings of envoy-config/standalone/envoy.yaml at --concurrency 1,
# listener P+12, admin P+22. Targets, interleaved within each round:
#
#   direct/other    subscribers connected straight to one master, the publisher
#                   to another master (Redis Cluster broadcasts PUBLISH to
#                   every node over the cluster bus)
#   direct/same     as direct/other, the publisher on the subscribers' master
#                   (no cluster bus hop)
#   module/proxy    subscribers through Envoy; publisher through Envoy too
#   module/node     subscribers through Envoy; publisher straight to a master
#
# The load generator is examples/pubsub_fanout.rs (built in release): it opens
# the subscribers, waits for every SUBSCRIBE acknowledgement, then PUBLISHes
# payloads carrying a sequence number and the send time on its monotonic clock;
# a subscriber's receive time minus that is the delivery latency. After the
# last PUBLISH it waits until every message arrived or none arrived for 20 s
# (at most 120 s; a master that fans out to 10,000 subscribers can be busy
# reading its cluster-bus backlog for many seconds before it writes to them);
# what has not arrived by then counts as lost. It measures what the machine achieved and never
# extrapolates: on 2 cores 10,000 subscribers x 1,000 msg/s (10 M deliveries/s)
# is out of reach; the "delivered msg/s" column says what was reached.
#
# Per cell it also records, over the publish+drain window: the CPU of the
# process that fans out (the subscribers' master for direct, Envoy for the
# module) per delivered message, Envoy's RSS (before the subscribers and at
# the end), the CPU the load generator used and the CPU of processes this run
# did not start. For the module: the upstream connections Envoy holds to the
# nodes while the subscribers are attached (its sockets in /proc/PID/fd
# matched with /proc/net/tcp), and how many of them are in subscribed mode
# (CLIENT LIST on the nodes: sub/psub/ssub). A build that refuses SUBSCRIBE is
# reported as "module: pub/sub not supported by this build".
#
# Needs an open-file limit of subscribers + 1024 (raised with ulimit -n; it
# stops with a message when the hard limit is lower) and as many free
# ephemeral ports. Output: target/bench-pubsub/results.md (printed at the
# end), raw numbers in target/bench-pubsub/raw.tsv, logs in
# target/bench-pubsub/run/. A benchmark, not a test: nothing is asserted. It
# stops every process it started (by PID) when it exits, also on Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

ORIG_ARGS="$*"
SUBSCRIBERS=10000
RATE=1000
SECONDS_ARG=10
ROUNDS=3
TARGETS_ARG="direct,module"
MODULE_PUB_ARG="proxy,node"
DIRECT_PUB_ARG="other,same"
THREADS=1
PAYLOAD=64
BASE_PORT="${BENCH_PUBSUB_PORT:-7501}"
MODULE_DIR_ARG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --subscribers) SUBSCRIBERS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --seconds) SECONDS_ARG="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --targets) TARGETS_ARG="$2"; shift 2 ;;
        --module-publisher) MODULE_PUB_ARG="$2"; shift 2 ;;
        --direct-publisher) DIRECT_PUB_ARG="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --payload-bytes) PAYLOAD="$2"; shift 2 ;;
        --port) BASE_PORT="$2"; shift 2 ;;
        --module-dir) MODULE_DIR_ARG="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for v in SUBSCRIBERS RATE SECONDS_ARG ROUNDS THREADS PAYLOAD BASE_PORT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "${v,,} needs a positive integer, not '${!v}'" >&2; exit 2; }
done
IFS=', ' read -r -a TARGETS <<<"$TARGETS_ARG"
IFS=', ' read -r -a MODULE_PUBS <<<"$MODULE_PUB_ARG"
IFS=', ' read -r -a DIRECT_PUBS <<<"$DIRECT_PUB_ARG"
CELLS=()
for t in "${TARGETS[@]}"; do
    case "$t" in
        direct)
            for p in "${DIRECT_PUBS[@]}"; do
                case "$p" in other | same) CELLS+=("direct/$p") ;; *) echo "--direct-publisher is other and/or same, not $p" >&2; exit 2 ;; esac
            done ;;
        module)
            for p in "${MODULE_PUBS[@]}"; do
                case "$p" in proxy | node) CELLS+=("module/$p") ;; *) echo "--module-publisher is proxy and/or node, not $p" >&2; exit 2 ;; esac
            done ;;
        *) echo "unknown target $t (direct or module)" >&2; exit 2 ;;
    esac
done
[ "${#CELLS[@]}" -gt 0 ] || { echo "no target to run" >&2; exit 2; }
RUN_MODULE=0
[[ " ${CELLS[*]} " == *" module/"* ]] && RUN_MODULE=1

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
OUT="$repo/target/bench-pubsub"
RUN="$OUT/run"
RAW="$OUT/raw.tsv"
RESULTS="$OUT/results.md"
CLUSTER_DIR_BENCH="$RUN/cluster"
CLUSTER_PORT="$BASE_PORT"
PROXY_PORT=$((BASE_PORT + 12))
ADMIN_PORT=$((BASE_PORT + 22))
CHANNEL="psbench"

BENCH_NAME=bench-pubsub
# shellcheck source=scripts/bench-lib.sh
source "$here/bench-lib.sh"
bench_traps

# --- limits: every subscriber is a file descriptor in the load generator and
# in Envoy or the node, and an ephemeral port ----------------------------------
NEED_FDS=$((SUBSCRIBERS + 1024))
cur_fds="$(ulimit -n)"
hard_fds="$(ulimit -Hn)"
if [ "$cur_fds" != unlimited ] && [ "$cur_fds" -lt "$NEED_FDS" ]; then
    ulimit -n "$NEED_FDS" 2>/dev/null ||
        die "cannot raise the open-file limit to $NEED_FDS for $SUBSCRIBERS subscribers (soft $cur_fds, hard $hard_fds): raise the hard limit (ulimit -Hn as root, /etc/security/limits.conf nofile, or the container's --ulimit nofile) or use --subscribers $((hard_fds > 1024 ? hard_fds - 1024 : 0)) or fewer"
fi
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
[ $((hi - lo + 1)) -gt $((SUBSCRIBERS + 100)) ] ||
    die "only $((hi - lo + 1)) ephemeral ports ($lo-$hi in /proc/sys/net/ipv4/ip_local_port_range) for $SUBSCRIBERS subscribers"

# --- prerequisites ---------------------------------------------------------------
T0=$(date +%s)
log "installing prerequisites (scripts/install.sh)"
ENVOY_VERSION="$ENVOY_VERSION" bash "$here/install.sh"
command -v python3 >/dev/null || die "python3 not found"
log "building the module and the load generator (cargo build --release)"
(cd "$repo" && cargo build --release --quiet && cargo build --release --quiet --example pubsub_fanout)
MODULE_DIR="$repo/target/release"
if [ -n "$MODULE_DIR_ARG" ]; then MODULE_DIR="$(cd "$MODULE_DIR_ARG" && pwd)"; fi
LOADGEN="$repo/target/release/examples/pubsub_fanout"
[ -f "$MODULE_DIR/libenvoy_redis_cluster.so" ] || die "no $MODULE_DIR/libenvoy_redis_cluster.so after the build"
[ -x "$LOADGEN" ] || die "no $LOADGEN after the build"
ENVOY_BIN="$(bash "$here/envoy-bin.sh" "$ENVOY_VERSION")"
[ -x "$ENVOY_BIN" ] || die "envoy binary not executable: $ENVOY_BIN"
ENVOY_VERSION_STR="$(envoy_version_str "$ENVOY_BIN")"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CLK_TCK="$(getconf CLK_TCK)"

mkdir -p "$RUN"
rm -f "$RAW" "$RESULTS" "$RUN"/envoy-*.log "$RUN"/cell-*.out "$RUN"/cell-*.err "$RUN"/cell-*.events

for off in 0 1 2 3 4 5 12 22 50 51 52 53 54 55; do
    port_busy $((BASE_PORT + off)) && die "port $((BASE_PORT + off)) is in use (pick another base with --port)"
done

# --- the cluster -------------------------------------------------------------------
log "starting a 3-master/3-replica cluster on ports $CLUSTER_PORT-$((CLUSTER_PORT + 5)) (open-file limit $(ulimit -n))"
CLUSTER_STARTED=1
CLUSTER_DIR="$CLUSTER_DIR_BENCH" bash "$here/cluster.sh" start --port "$CLUSTER_PORT"
NODE_PORTS=()
declare -A NODE_PID=()
while read -r p pid; do NODE_PORTS+=("$p"); NODE_PID[$p]="$pid"; done <"$CLUSTER_DIR_BENCH/pids"
MASTERS=()
for p in "${NODE_PORTS[@]}"; do
    if [ "$(redis-cli -p "$p" role | head -1)" = "master" ]; then MASTERS+=("$p"); fi
done
[ "${#MASTERS[@]}" -eq 3 ] || die "expected 3 masters, found: ${MASTERS[*]}"
SUB_NODE="${MASTERS[0]}"
PUB_NODE="${MASTERS[1]}"
# Redis accepts 10,000 clients by default; the subscribers plus the cluster's
# own connections need more. cluster.sh's 2 s node timeout (quick failover
# for the tests) would fail over a master that is busy fanning out for a few
# seconds, which then loses the messages in flight on the cluster bus: the
# benchmark uses Redis's default, 15 s.
for p in "${NODE_PORTS[@]}"; do
    for kv in "maxclients $((SUBSCRIBERS + 512))" "cluster-node-timeout 15000"; do
        # shellcheck disable=SC2086 # two words: the parameter and its value
        r="$(redis-cli -p "$p" config set $kv 2>&1)"
        [ "$r" = OK ] || die "node $p: CONFIG SET $kv answered: $r"
    done
done

# --- Envoy with the module -------------------------------------------------------------
ENVOY=""
if [ "$RUN_MODULE" -eq 1 ]; then
    cfg="$RUN/envoy-module.yaml"
    logf="$RUN/envoy-module.log"
    module_config "$PROXY_PORT" "$ADMIN_PORT" "127.0.0.1:$CLUSTER_PORT" "127.0.0.1:$((CLUSTER_PORT + 1))" \
        "127.0.0.1:$((CLUSTER_PORT + 2))" >"$cfg"
    redis-cli -c -p "$CLUSTER_PORT" set psbench:ready yes >/dev/null
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR" \
        "$ENVOY_BIN" -c "$cfg" --disable-hot-restart --concurrency 1 -l warning >"$logf" 2>&1 </dev/null &
    ENVOY=$!
    ENVOY_PID[module]=$ENVOY
    # Ready when a key reads back through it (it has learnt the slot map).
    v=""
    for ((n = 0; n < 300; n++)); do
        alive "$ENVOY" || { tail -n 30 "$logf" >&2; die "envoy exited during start-up (log $logf)"; }
        v="$(redis-cli -p "$PROXY_PORT" get psbench:ready 2>/dev/null || true)"
        [ "$v" = yes ] && break
        sleep 0.1
    done
    [ "$v" = yes ] || die "envoy does not serve GET after 30 s (log $logf; last reply: $v)"
    ENVOY_LOG_START="$(wc -l <"$logf")"
    log "envoy --concurrency 1: pid $ENVOY, port $PROXY_PORT, admin $ADMIN_PORT"
fi

# Envoy's TCP connections to the nodes, from its sockets and /proc/net/tcp,
# and how many of them the nodes list in subscribed mode. Prints
# "TOTAL SUBSCRIBED per-node-detail".
upstream_conns() {
    python3 - "$ENVOY" "${NODE_PORTS[@]}" <<'PY'
import os, subprocess, sys
pid, ports = sys.argv[1], {int(p) for p in sys.argv[2:]}
inodes = set()
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
local = {}  # Envoy's local port -> node port, established connections only
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:
            lport, rport = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            if rport in ports:
                local[lport] = rport
subscribed, per_node = 0, {}
for port in sorted(ports):
    n = sum(1 for r in local.values() if r == port)
    s = 0
    out = subprocess.run(["redis-cli", "-p", str(port), "client", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
        lport = int(kv.get("addr", ":0").rsplit(":", 1)[1] or 0)
        if lport in local and any(int(kv.get(k, "0") or 0) > 0 for k in ("sub", "psub", "ssub")):
            s += 1
    subscribed += s
    if n:
        per_node[port] = f"{n}" + (f" ({s} subscribed)" if s else "")
print(len(local), subscribed, ",".join(f"{p}:{v}" for p, v in per_node.items()).replace(" ", "_") or "-")
PY
}

clients_of() { timeout 30 redis-cli -p "$1" info clients | tr -d '\r' | awk -F: '/^connected_clients:/ {print $2}'; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# After a cell: wait (at most 60 s) until the subscribers' connections are gone.
wait_quiet() { # CELL
    local n
    for ((n = 0; n < 600; n++)); do
        if [ "${1%%/*}" = direct ]; then
            [ "$(clients_of "$SUB_NODE" || echo busy)" -lt 50 ] 2>/dev/null && return 0
        else
            [ "$(fd_count "$ENVOY")" -lt $((ENVOY_FDS0 + 50)) ] && return 0
        fi
        sleep 0.1
    done
    log "warning: the subscribers of the last $1 cell were still connected after 60 s"
}

# Failovers and failure reports the nodes logged, and the roles, so that a
# cell that overloaded a node says so.
log_lines() { local p out=""; for p in "${NODE_PORTS[@]}"; do out+="$p:$(wc -l <"$CLUSTER_DIR_BENCH/$p/redis.log") "; done; echo "$out"; }
cluster_events() { # LOG_LINES_BEFORE
    local e p n
    for e in $1; do
        p="${e%%:*}"; n="${e#*:}"
        tail -n +$((n + 1)) "$CLUSTER_DIR_BENCH/$p/redis.log" |
            grep -E 'as failing|Failover|failover|Reconfiguring myself|Connection with (replica|master).* lost' |
            sed "s/^/$p: /" || true
    done
}
roles() { local p out=""; for p in "${NODE_PORTS[@]}"; do out+="$p:$(timeout 30 redis-cli -p "$p" role 2>/dev/null | head -1) "; done; echo "$out"; }
# A cell that overloads a master can get it failed over: give the masters
# their role back (CLUSTER FAILOVER on the old master), so that every cell
# starts from the same layout.
restore_layout() {
    local p n changed=0
    for p in "${MASTERS[@]}"; do
        [ "$(timeout 30 redis-cli -p "$p" role 2>/dev/null | head -1)" = master ] && continue
        changed=1
        log "node $p is no longer a master: CLUSTER FAILOVER on it"
        timeout 30 redis-cli -p "$p" cluster failover >/dev/null 2>&1 || true
        for ((n = 0; n < 300; n++)); do
            [ "$(timeout 30 redis-cli -p "$p" role 2>/dev/null | head -1)" = master ] && break
            sleep 0.1
        done
    done
    if [ "$changed" -eq 1 ]; then wait_healthy; fi
}
# One subscriber on the subscribers' master must receive what is published
# on the other master (the cluster bus can stay broken after an overload):
# retried for up to 60 s; prints "ok" or what went wrong.
bus_check() {
    local n res=""
    for ((n = 0; n < 20; n++)); do
        res="$("$LOADGEN" --sub-addr "127.0.0.1:$SUB_NODE" --pub-addr "127.0.0.1:$PUB_NODE" --subscribers 1 \
            --rate 100 --seconds 0.5 --channel psbench-check --drain-idle-ms 1000 --drain-max 3 2>&1 | tail -1)"
        case "$res" in *"lost 0 ("*) echo ok; return ;; esac
        sleep 3
    done
    echo "${res#pubsub_fanout: }"
}
wait_healthy() {
    local n
    for ((n = 0; n < 60; n++)); do
        CLUSTER_DIR="$CLUSTER_DIR_BENCH" bash "$here/cluster.sh" status --port "$CLUSTER_PORT" >/dev/null 2>&1 && return 0
        sleep 1
    done
    log "warning: the cluster is not healthy 60 s after the cell"
}

printf 'round\tcell\tstatus\tupstream_total\tupstream_subscribed\tupstream_nodes\tenvoy_rss0_kb\tcluster_events\tdetail\tresult\n' >"$RAW"

declare -A SKIP=()
ENVOY_FDS0=0
if [ -n "$ENVOY" ]; then ENVOY_FDS0="$(fd_count "$ENVOY")"; fi
run_cell() { # ROUND CELL
    local r="$1" cell="$2" sub_addr pub_addr out err rc=0 status=ok detail="" result="" n
    local up_total="" up_sub="" up_nodes="" rss0="" watch=() lines0 roles0 roles1 events="" check=""
    out="$RUN/cell-$r-${cell/\//-}.out"
    err="$RUN/cell-$r-${cell/\//-}.err"
    for p in "${NODE_PORTS[@]}"; do watch+=(--watch "n$p=${NODE_PID[$p]}"); done
    case "$cell" in
        direct/other) sub_addr="127.0.0.1:$SUB_NODE"; pub_addr="127.0.0.1:$PUB_NODE" ;;
        direct/same) sub_addr="127.0.0.1:$SUB_NODE"; pub_addr="127.0.0.1:$SUB_NODE" ;;
        module/proxy) sub_addr="127.0.0.1:$PROXY_PORT"; pub_addr="127.0.0.1:$PROXY_PORT" ;;
        module/node) sub_addr="127.0.0.1:$PROXY_PORT"; pub_addr="127.0.0.1:$PUB_NODE" ;;
    esac
    if [ "${cell%%/*}" = module ]; then watch+=(--watch "envoy=$ENVOY"); fi
    if [ -n "${SKIP[$cell]:-}" ]; then
        status=skipped; detail="${SKIP[$cell]}"
    elif [ "${cell%%/*}" = module ] && ! alive "$ENVOY"; then
        status=error; detail="envoy exited before this cell"
    else
        restore_layout
        check="$(bus_check)"
        if [ "$check" != ok ]; then
            log "warning: before r$r $cell, a message published on $PUB_NODE did not reach a subscriber on $SUB_NODE within 60 s: $check"
        fi
        if [ "${cell%%/*}" = module ]; then rss0="$(rss_kb "$ENVOY")"; fi
        lines0="$(log_lines)"
        roles0="$(roles)"
        "$LOADGEN" --sub-addr "$sub_addr" --pub-addr "$pub_addr" --subscribers "$SUBSCRIBERS" \
            --rate "$RATE" --seconds "$SECONDS_ARG" --channel "$CHANNEL" --threads "$THREADS" \
            --payload-bytes "$PAYLOAD" --drain-idle-ms 20000 --drain-max 120 --clk-tck "$CLK_TCK" "${watch[@]}" >"$out" 2>"$err" </dev/null &
        CHILD_PID=$!
        # The module's upstream connections while the subscribers are attached:
        # sampled once the load generator reports every acknowledgement.
        if [ "${cell%%/*}" = module ]; then
            for ((n = 0; n < 6000; n++)); do
                alive "$CHILD_PID" || break
                grep -q 'subscribers acknowledged' "$err" && break
                sleep 0.05
            done
            if alive "$CHILD_PID" && grep -q 'subscribers acknowledged' "$err"; then
                read -r up_total up_sub up_nodes < <(upstream_conns)
            fi
        fi
        wait "$CHILD_PID" || rc=$?
        CHILD_PID=""
        case "$rc" in
            0)
                result="$(grep '^RESULT ' "$out" | tail -1 | cut -d' ' -f2-)"
                [ -n "$result" ] || { status=error; detail="no RESULT line (see $err)"; } ;;
            3)
                status=unsupported
                detail="pub/sub not supported by this build (SUBSCRIBE answered -$(sed -n 's/^REFUSED subscribe //p' "$out"))"
                SKIP[$cell]="$detail" ;;
            4)
                status=unsupported
                detail="PUBLISH refused by this build (answered -$(sed -n 's/^REFUSED publish //p' "$out"))"
                SKIP[$cell]="$detail" ;;
            *)
                status=error
                detail="load generator exit $rc: $(grep -v '^$' "$err" | tail -1)" ;;
        esac
        wait_quiet "$cell"
        wait_healthy
        roles1="$(roles)"
        events="$(cluster_events "$lines0" | wc -l) failure/failover log lines"
        if [ "$roles0" != "$roles1" ]; then events+="; roles changed: $roles0-> $roles1"; fi
        if [ "$check" != ok ]; then events="cluster bus check before the cell failed ($check); $events"; fi
        cluster_events "$lines0" >"${out%.out}.events"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$cell" "$status" "$up_total" "$up_sub" "$up_nodes" \
        "$rss0" "$events" "$(printf '%s' "$detail" | tr '\t\n' '  ')" "$result" >>"$RAW"
    if [ "$status" = ok ]; then
        log "r$r $cell: $(grep -v '^$' "$err" | tail -1 | sed 's/^pubsub_fanout: //')${up_total:+; upstream connections $up_total ($up_sub subscribed)}"
    else
        log "r$r $cell: $status: $detail"
    fi
}

log "subscribers on master $SUB_NODE (direct) or Envoy $PROXY_PORT (module); publisher on master $PUB_NODE (direct/other, module/node), $SUB_NODE (direct/same) or Envoy (module/proxy)"
log "$SUBSCRIBERS subscribers, $RATE msg/s for $SECONDS_ARG s, $PAYLOAD-byte payloads, $ROUNDS round(s): ${CELLS[*]}"
TSTART=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
    for cell in "${CELLS[@]}"; do run_cell "$r" "$cell"; done
done
TEND=$(date +%s)

envoy_log_summary=""
if [ -n "$ENVOY" ]; then
    state=running; alive "$ENVOY" || state=EXITED
    nerr="$(tail -n +$((ENVOY_LOG_START + 1)) "$RUN/envoy-module.log" | grep -c '\]\[\(error\|critical\)\]' || true)"
    nwarn="$(tail -n +$((ENVOY_LOG_START + 1)) "$RUN/envoy-module.log" | grep -c '\]\[warning\]' || true)"
    envoy_log_summary="$state at the end; after start-up it logged $nerr error/critical and $nwarn warning lines ($RUN/envoy-module.log)"
fi

# --- the table ------------------------------------------------------------------------
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
GIT_REV="$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(cd "$repo" && git status --porcelain -- src examples Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    GIT_REV+=" + uncommitted changes"
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
export RAW SUB_NODE PUB_NODE envoy_log_summary CMDLINE="scripts/bench-pubsub.sh $ORIG_ARGS"
export MACHINE_LINE="$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($CPU_MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB; Envoy $ENVOY_VERSION_STR --concurrency 1; redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2); commit $GIT_REV$([ -n "$MODULE_DIR_ARG" ] && echo ", module from $MODULE_DIR"); measuring took $((TEND - TSTART)) s; load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
python3 - <<'PY' >"$RESULTS"
import csv, os, statistics

rows = list(csv.DictReader(open(os.environ["RAW"]), delimiter="\t"))
for r in rows:
    r["kv"] = dict(x.split("=", 1) for x in r["result"].split() if "=" in x)

def num(r, k):
    v = r["kv"].get(k, "")
    return float(v) if v not in ("", None) else None

def med(rs, k, fmt, scale=1.0):
    vals = [num(r, k) for r in rs]
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "–"
    s = fmt(statistics.median(vals))
    if len(vals) > 1:
        s += f" ({fmt(min(vals))}–{fmt(max(vals))})"
    return s

ms = lambda v: f"{v:.1f}" if v < 100 else f"{v:.0f}"
kilo = lambda v: f"{v / 1000:.0f}k" if v >= 10_000 else f"{v:.0f}"
sub_node, pub_node = os.environ["SUB_NODE"], os.environ["PUB_NODE"]
labels = {
    "direct/other": ("direct", f"master {sub_node}", f"master {pub_node}", f"n{sub_node}"),
    "direct/same": ("direct", f"master {sub_node}", f"master {sub_node} (same)", f"n{sub_node}"),
    "module/proxy": ("module", "Envoy", "Envoy", "envoy"),
    "module/node": ("module", "Envoy", f"master {pub_node}", "envoy"),
}
out = ["# Pub/Sub fan-out benchmark", "", f"`{os.environ['CMDLINE'].strip()}`", "", os.environ["MACHINE_LINE"], ""]
first = next((r for r in rows if r["status"] == "ok"), None)
if first:
    kv = first["kv"]
    offered = float(kv["rate"]) * int(kv["subscribers"])
    out.append(f"{kv['subscribers']} subscribers on one channel, publisher at {float(kv['rate']):.0f} msg/s for "
               f"{float(kv['seconds']):.0f} s ({kv['payload_bytes']}-byte payloads): {kilo(offered)} deliveries/s offered. "
               "Median over the rounds (min–max).")
    out.append("")
out.append("| target | subscribers to | publisher to | published msg/s | delivered / expected | delivered msg/s "
           "| lost (subscribers that lost any) | p50 ms | p99 ms | max ms | fan-out CPU µs/msg | Envoy RSS MiB before → after "
           "| upstream connections (subscribed) |")
out.append("| --- | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |")
notes = []
for cell in dict.fromkeys(r["cell"] for r in rows):
    name, subs_to, pub_to, fan = labels[cell]
    rs = [r for r in rows if r["cell"] == cell and r["status"] == "ok"]
    bad = [r for r in rows if r["cell"] == cell and r["status"] != "ok"]
    if not rs:
        why = bad[0]["detail"] if bad else "no result"
        if bad and bad[0]["status"] == "unsupported":
            notes.append(f"{name}: {why}")
        out.append(f"| {name} | {subs_to} | {pub_to} | {why} |" + " |" * 9)
        continue
    delivered = sum(int(num(r, "delivered")) for r in rs)
    expected = sum(int(num(r, "expected")) for r in rs)
    lost = sum(int(num(r, "lost")) for r in rs)
    subs_lost = max(int(num(r, "subs_lost")) for r in rs)
    rss = "–"
    if cell.startswith("module"):
        r0 = [int(r["envoy_rss0_kb"]) / 1024 for r in rs if r["envoy_rss0_kb"]]
        r1 = [num(r, "rss_kb_envoy") / 1024 for r in rs if num(r, "rss_kb_envoy") is not None]
        if r0 and r1:
            rss = f"{statistics.median(r0):.0f} → {statistics.median(r1):.0f}"
    up = "–"
    if cell.startswith("module"):
        ups = [(r["upstream_total"], r["upstream_subscribed"]) for r in rs if r["upstream_total"]]
        if ups:
            up = ", ".join(sorted({f"{t} ({s})" for t, s in ups}))
    out.append(
        f"| {name} | {subs_to} | {pub_to} | {med(rs, 'publish_rate', lambda v: f'{v:.0f}')} "
        f"| {delivered:,} / {expected:,} | {med(rs, 'delivery_rate', kilo)} "
        f"| {lost:,} ({subs_lost}) | {med(rs, 'p50_us', ms, 1e-3)} | {med(rs, 'p99_us', ms, 1e-3)} "
        f"| {med(rs, 'max_us', ms, 1e-3)} | {med(rs, 'cpu_us_per_msg_' + fan, lambda v: f'{v:.2f}')} | {rss} | {up} |")
    for r in rs:
        kv = r["kv"]
        extra = []
        if kv.get("drained") != "complete":
            extra.append(f"drain ended '{kv.get('drained')}' after {kv.get('drain_s')} s with "
                         f"{int(kv['expected']) - int(kv['delivered']):,} deliveries missing")
        for k, what in (("dups", "duplicates"), ("unexpected", "unexpected replies"),
                        ("disconnected", "subscribers disconnected"), ("publish_errors", "PUBLISH errors")):
            if kv.get(k, "0") != "0":
                extra.append(f"{kv[k]} {what}")
        ev = r["cluster_events"]
        if ev and ev != "0 failure/failover log lines":
            extra.append(f"the nodes logged {ev} (run/cell-{r['round']}-{cell.replace('/', '-')}.events)")
        if float(kv.get("publisher_lag_max_ms", "0")) > 100:
            extra.append(f"the publisher fell up to {kv['publisher_lag_max_ms']} ms behind its schedule")
        if extra:
            notes.append(f"round {r['round']} {cell}: " + "; ".join(extra))
    for r in bad:
        notes.append(f"round {r['round']} {cell}: {r['status']}: {r['detail']}")
out.append("")
out.append("Columns: *published msg/s* is what the publisher achieved; *delivered / expected* sums the rounds "
           "(expected = published × subscribers); *delivered msg/s* = deliveries / (first PUBLISH → last receipt); "
           "*lost* = published messages a subscriber had not received when the drain ended (summed over subscribers and rounds); latency is publish → receipt in the load generator (1.6% buckets); *fan-out CPU* is the CPU of the "
           "process that copies each message to the subscribers (the subscribers' master for direct, Envoy for the "
           "module) over the publish + drain window, per delivered message. Upstream connections: Envoy's TCP "
           "connections to the nodes while the subscribers were attached, of which the nodes list as subscribed.")
out.append("")
out.append("Notes:")
out.append("")
for n in dict.fromkeys(notes):
    out.append(f"- {n}")
lg = [num(r, "cpu_s_loadgen") / num(r, "window_s") * 100 for r in rows if r["status"] == "ok" and num(r, "window_s")]
other = [num(r, "other_cpu_pct") for r in rows if r["status"] == "ok" and num(r, "other_cpu_pct") is not None]
if lg:
    out.append(f"- The load generator itself used {statistics.median(lg):.0f}% of one CPU (median; max {max(lg):.0f}%) "
               "in the publish + drain windows: on this machine it competes with the fan-out for the same cores, "
               "so subscriber-side receipt (and the latency) includes its own queueing.")
if other:
    out.append(f"- CPU used by processes this run did not start, in % of all CPUs: median {statistics.median(other):.1f}%, "
               f"max {max(other):.1f}%.")
if os.environ.get("envoy_log_summary"):
    out.append(f"- Envoy: {os.environ['envoy_log_summary']}.")
out.append("- Achieved figures only: when the machine cannot deliver subscribers × rate, the delivered rate is "
           "below the offered one and latency includes the backlog.")
print("\n".join(out))
PY
cat "$RESULTS"
for cell in "${!SKIP[@]}"; do
    case "${SKIP[$cell]}" in pub/sub*) echo "${cell%%/*}: pub/sub not supported by this build" ;; esac
done | sort -u | while read -r line; do log "$line"; done
log "results in $RESULTS, raw numbers in $RAW, logs in $RUN (total $(($(date +%s) - T0)) s)"
