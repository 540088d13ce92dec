#!/usr/bin/env bash
# The demo: a Redis Cluster (ports 7001-7006, 3 masters + 3 replicas) and Envoy
# with the envoy_redis_cluster module on port 7000 in front of it.
#
#   scripts/demo.sh                 build, start, wait; Ctrl-C stops everything
#   scripts/demo.sh --background    build, start, return (leave them running)
#   scripts/demo.sh stop            stop what a --background run left running
#
# Environment: ENVOY_VERSION (default 1.40.0), DEMO_CONFIG (default
# envoy-config/standalone/envoy.yaml), SKIP_BUILD=1 to use the existing build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

CONFIG="${DEMO_CONFIG:-$repo/envoy-config/standalone/envoy.yaml}"
PROXY_PORT=7000
ADMIN_PORT=9901

log() { echo "[demo] $*" >&2; }

stop_all() {
    bash "$here/run-envoy.sh" stop || true
    bash "$here/cluster.sh" stop || true
}

# Stop first, print after, and never die of SIGPIPE on the way (if our
# output goes through a pipe, Ctrl-C may have killed its reader already).
# shellcheck disable=SC2317 # invoked by the EXIT trap
on_exit() {
    trap "" PIPE
    local msg
    msg="$(stop_all 2>&1)"
    { echo; echo "$msg"; echo "[demo] stopped Envoy and the cluster"; } >&2 || true
}

mode=foreground
case "${1:-}" in
    "") ;;
    --background | -b) mode=background ;;
    stop) stop_all; exit 0 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

bash "$here/install.sh"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release
fi

if [ "$mode" = foreground ]; then
    # From here on, Ctrl-C (or any failure) stops Envoy and the cluster.
    trap on_exit EXIT
    trap 'exit 130' INT TERM
fi

bash "$here/cluster.sh" start --port 7001 --masters 3 --replicas 1
MODULE_DIR="$repo/target/release" bash "$here/run-envoy.sh" start "$CONFIG"

log "waiting for PONG through Envoy on port $PROXY_PORT"
ok=0
for ((n = 0; n < 100; n++)); do
    if [ "$(redis-cli -p "$PROXY_PORT" ping 2>/dev/null)" = "PONG" ]; then ok=1; break; fi
    sleep 0.1
done
if [ "$ok" != 1 ]; then
    log "no PONG from 127.0.0.1:$PROXY_PORT; last lines of Envoy's log:"
    tail -n 30 "$repo/.run/envoy/envoy.log" >&2 || true
    exit 1
fi

cat <<EOF

  Envoy is proxying the Redis Cluster on 127.0.0.1:7001-7006 at 127.0.0.1:$PROXY_PORT.

  Try (a plain client, no -c needed):
    redis-cli -p $PROXY_PORT ping
    redis-cli -p $PROXY_PORT set foo bar
    redis-cli -p $PROXY_PORT get foo
    redis-cli -p $PROXY_PORT incr visits
    redis-cli -p $PROXY_PORT mset a 1 b 2 c 3     # keys on different nodes: split and merged
    redis-cli -p $PROXY_PORT mget a b c
    redis-cli -p $PROXY_PORT dbsize                 # summed over every master
    redis-cli -p $PROXY_PORT --scan | head          # SCAN across the whole cluster

  Which node holds a key:
    redis-cli -p 7001 cluster keyslot foo         # the key's hash slot (12182)
    redis-cli -p 7001 cluster shards              # slot ranges -> nodes
    redis-cli -c -p 7001 get foo                  # straight from the cluster
    for p in 7001 7002 7003; do echo "\$p: \$(redis-cli -p \$p --no-raw get foo)"; done
                                                  # only the owner has it; the others say MOVED

  State:
    scripts/cluster.sh status
    curl -s 127.0.0.1:$ADMIN_PORT/stats | grep 'redis\.redis\.'   # the module's statistics
    less .run/envoy/envoy.log

EOF

if [ "$mode" = background ]; then
    log "left running; stop with: scripts/demo.sh stop"
    exit 0
fi

log "running; press Ctrl-C to stop Envoy and the cluster"
envoy_pid="$(cat "$repo/.run/envoy/envoy.pid")"
# Wait for Ctrl-C, or for Envoy to die on its own.
# (/proc, not kill -0: an exited Envoy nobody reaps stays a zombie.)
while [ -e "/proc/$envoy_pid" ] && [ "$(awk '{print $3}' "/proc/$envoy_pid/stat" 2>/dev/null)" != Z ]; do
    sleep 1
done
log "envoy exited; see .run/envoy/envoy.log"
exit 1
