#!/usr/bin/env bash
# A Redis Cluster on loopback, for the demo and for trying things by hand.
#
#   scripts/cluster.sh start   [options]   start it (no-op when it already runs healthy)
#   scripts/cluster.sh stop    [options]   stop exactly the redis-server PIDs we started
#   scripts/cluster.sh status  [options]   print the nodes and exit 0 when healthy
#
# Options (or environment):
#   --port P      CLUSTER_BASE_PORT  first node's port (default 7001); nodes use
#                                    P .. P+N-1 and their cluster bus P+50 ..
#   --masters M   CLUSTER_MASTERS    number of masters (default 3)
#   --replicas R  CLUSTER_REPLICAS   replicas per master (default 1)
#   --dir D       CLUSTER_DIR        data dir (default <repo>/.run/cluster)
#
# Each node lives in D/<port>/ (redis.conf, nodes.conf, redis.log, redis.pid).
# D/pids lists "port pid" for every node started; `stop` kills only those PIDs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

cmd="${1:-}"
[ $# -gt 0 ] && shift
BASE_PORT="${CLUSTER_BASE_PORT:-7001}"
MASTERS="${CLUSTER_MASTERS:-3}"
REPLICAS="${CLUSTER_REPLICAS:-1}"
DIR="${CLUSTER_DIR:-$repo/.run/cluster}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) BASE_PORT="$2"; shift 2 ;;
        --masters) MASTERS="$2"; shift 2 ;;
        --replicas) REPLICAS="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
BUS_OFFSET=50
NODES=$((MASTERS * (1 + REPLICAS)))
PORTS=()
for ((i = 0; i < NODES; i++)); do PORTS+=($((BASE_PORT + i))); done

log() { echo "[cluster] $*" >&2; }
die() { log "$*"; exit 1; }

# A PID is alive when it exists and is not a zombie (a daemonized redis-server
# whose parent never reaps it would otherwise look alive forever).
alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}

# Something accepts TCP connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cli() { local p="$1"; shift; redis-cli -h 127.0.0.1 -p "$p" "$@"; }

# CLUSTER SLOTS of one node in a canonical, sorted form: one line per node of
# each slot range ("start-end M port" for the master, "start-end R port" for a
# replica). redis-cli prints the nested reply flat: start, end, then per node
# ip, port, id and an empty line for the (empty) metadata map.
slots_of() {
    cli "$1" cluster slots 2>/dev/null | awk '
        /^[0-9]+$/ && expect_port { print range, (first ? "M" : "R"), $0; first = 0; expect_port = 0; next }
        /^[0-9]+$/ { if (have_start) { range = start "-" $0; have_start = 0; first = 1 } else { start = $0; have_start = 1 }; next }
        /^[0-9.]+$/ || /:/ { expect_port = 1; next }
    ' | sort
}

# The cluster is healthy when every node says cluster_state:ok and all nodes
# report the same slot map, covering every node (so replicas are visible).
healthy() {
    local p ref="" cur
    for p in "${PORTS[@]}"; do
        cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
        cur="$(slots_of "$p")"
        [ "$(printf '%s\n' "$cur" | awk 'NF' | wc -l)" -eq "$NODES" ] || return 1
        if [ -z "$ref" ]; then ref="$cur"; elif [ "$cur" != "$ref" ]; then return 1; fi
    done
}

recorded_pids() { if [ -f "$DIR/pids" ]; then awk '{print $2}' "$DIR/pids"; fi; }

all_recorded_alive() {
    [ -f "$DIR/pids" ] || return 1
    [ "$(wc -l <"$DIR/pids")" -eq "$NODES" ] || return 1
    local pid
    for pid in $(recorded_pids); do alive "$pid" || return 1; done
}

do_stop() {
    local pid n
    for pid in $(recorded_pids); do
        if alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
    done
    for pid in $(recorded_pids); do
        for ((n = 0; n < 50; n++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    rm -f "$DIR/pids"
}

start_node() {
    local p="$1" d="$DIR/$1" n
    mkdir -p "$d"
    cat >"$d/redis.conf" <<CONF
port $p
bind 127.0.0.1
protected-mode no
cluster-enabled yes
cluster-port $((p + BUS_OFFSET))
cluster-config-file $d/nodes.conf
cluster-node-timeout 2000
cluster-require-full-coverage no
repl-ping-replica-period 1
repl-diskless-sync-delay 0
save ""
appendonly no
dir $d
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
CONF
    redis-server "$d/redis.conf" || die "redis-server on port $p did not start (see $d/redis.log)"
    for ((n = 0; n < 100; n++)); do
        [ -s "$d/redis.pid" ] && break
        sleep 0.05
    done
    [ -s "$d/redis.pid" ] || die "no pidfile from node $p (see $d/redis.log)"
    echo "$p $(cat "$d/redis.pid")" >>"$DIR/pids"
}

do_start() {
    if all_recorded_alive && healthy; then
        log "already running and healthy: ports ${PORTS[0]}-${PORTS[-1]} ($DIR)"
        return 0
    fi
    # Anything half-there from an earlier run: stop it and start clean.
    do_stop
    local p
    for p in "${PORTS[@]}"; do
        port_busy "$p" && die "port $p is in use by another process"
        port_busy $((p + BUS_OFFSET)) && die "port $((p + BUS_OFFSET)) (cluster bus) is in use"
    done
    # Remove only what this script creates, never the whole (user-given) dir.
    for p in "${PORTS[@]}"; do rm -rf "${DIR:?}/$p"; done
    rm -f "$DIR/create.log"
    mkdir -p "$DIR"
    : >"$DIR/pids"
    for p in "${PORTS[@]}"; do start_node "$p"; done
    # Wait until every node answers PING.
    local n ok
    for ((n = 0; n < 100; n++)); do
        ok=1
        for p in "${PORTS[@]}"; do
            [ "$(cli "$p" ping 2>/dev/null)" = "PONG" ] || ok=0
        done
        [ "$ok" -eq 1 ] && break
        sleep 0.1
    done
    [ "$ok" -eq 1 ] || die "not every node answers PING"

    local addrs=()
    for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
    if [ "$MASTERS" -lt 3 ]; then
        die "redis-cli --cluster create needs at least 3 masters"
    fi
    log "creating cluster: $MASTERS masters x $REPLICAS replicas on ports ${PORTS[0]}-${PORTS[-1]}"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REPLICAS" --cluster-yes \
        >"$DIR/create.log" 2>&1 || { cat "$DIR/create.log" >&2; die "cluster create failed"; }

    # Replicas show up in CLUSTER SLOTS only after their first replication
    # ping round, a few seconds after creation.
    for ((n = 0; n < 300; n++)); do
        healthy && break
        sleep 0.2
    done
    healthy || { do_status >&2 || true; die "cluster did not become healthy within 60 s"; }
    log "cluster ready: ports ${PORTS[0]}-${PORTS[-1]}, data in $DIR"
}

do_status() {
    local line p pid rc=0
    if [ ! -f "$DIR/pids" ]; then
        echo "not running (no $DIR/pids)"
        return 1
    fi
    # Report on the nodes that were started, whatever options this call got.
    mapfile -t PORTS < <(awk '{print $1}' "$DIR/pids")
    NODES=${#PORTS[@]}
    while read -r p pid; do
        if alive "$pid"; then
            line="$(cli "$p" role 2>/dev/null | head -1)"
            echo "node 127.0.0.1:$p pid $pid ${line:-no answer}"
        else
            echo "node 127.0.0.1:$p pid $pid DEAD"
            rc=1
        fi
    done <"$DIR/pids"
    if healthy; then
        echo "cluster_state: ok, all nodes agree on the slot map"
        slots_of "${PORTS[0]}" | sed 's/^/  /'
    else
        echo "cluster: NOT healthy"
        rc=1
    fi
    return "$rc"
}

command -v redis-server >/dev/null 2>&1 || die "redis-server not found: run scripts/install.sh"

case "$cmd" in
    start) do_start ;;
    stop) do_stop; log "stopped" ;;
    status) do_status ;;
    *) echo "usage: $0 start|stop|status [--port P] [--masters M] [--replicas R] [--dir D]" >&2; exit 2 ;;
esac
