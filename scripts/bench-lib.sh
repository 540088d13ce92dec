# Helpers shared by scripts/bench.sh, scripts/bench-pubsub.sh and scripts/profile.sh; sourced, not run.
#
# The sourcing script sets `here` and `repo` and, before the cluster/Envoy
# helpers run, CLUSTER_DIR_BENCH and CLUSTER_PORT; BENCH_NAME prefixes the log.
# bench_cleanup stops, by PID, the Envoys in ENVOY_PID, the child in CHILD_PID
# and the cluster when CLUSTER_STARTED=1: only what the script started.

log() { echo "[${BENCH_NAME:-bench} $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# utime+stime (clock ticks) and VmRSS (KiB) of a process.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# "version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" -> "1.40.0 (<sha:10>, RELEASE)"
envoy_version_str() { # ENVOY_BIN
    "$1" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 | cut -d' ' -f2 |
        awk -F/ '{printf "%s (%s, %s)", $2, substr($1, 1, 10), $4}'
}

# The module's own bootstrap (envoy-config/standalone/envoy.yaml) with other
# ports and seeds.
module_config() { # PORT ADMIN SEED...
    local src="$repo/envoy-config/standalone/envoy.yaml" seeds port="$1" admin="$2"
    shift 2
    seeds="$(printf '"%s", ' "$@")"
    seeds="[${seeds%, }]"
    grep -q 'port_value: 9901 }' "$src" && grep -q 'port_value: 7000 }' "$src" && grep -q '^ *seeds: \[' "$src" ||
        die "$src no longer has the admin 9901 / listener 7000 / seeds lines this script rewrites"
    sed -e "s/port_value: 9901 }/port_value: $admin }/" \
        -e "s/port_value: 7000 }/port_value: $port }/" \
        -e "s/^\( *seeds: \)\[.*\]/\1$seeds/" "$src"
}

# Envoy's built-in Redis proxy (redis_proxy + envoy.clusters.redis), settings
# matching envoy-config/standalone/envoy.yaml, the seeds as its endpoints.
builtin_config() { # PORT ADMIN SEED...
    local port="$1" admin="$2" seed
    shift 2
    cat <<YAML
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $admin }
static_resources:
  listeners:
    - name: redis_listener
      address:
        socket_address: { address: 127.0.0.1, port_value: $port }
      filter_chains:
        - filters:
            - name: envoy.filters.network.redis_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
                stat_prefix: redis
                settings:
                  op_timeout: 5s
                  enable_redirection: true
                  enable_hashtagging: true
                  read_policy: MASTER
                prefix_routes:
                  catch_all_route: { cluster: main }
  clusters:
    - name: main
      connect_timeout: 1s
      lb_policy: CLUSTER_PROVIDED
      cluster_type:
        name: envoy.clusters.redis
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.clusters.redis.v3.RedisClusterConfig
          cluster_refresh_rate: 5s
          cluster_refresh_timeout: 3s
      load_assignment:
        cluster_name: main
        endpoints:
          - lb_endpoints:
YAML
    for seed in "$@"; do
        echo "              - endpoint: { address: { socket_address: { address: ${seed%:*}, port_value: ${seed##*:} } } }"
    done
}

# --- cleanup: only what this script started, by PID --------------------------
declare -A ENVOY_PID=()
CHILD_PID=""
CLUSTER_STARTED=0
bench_cleanup() {
    local rc=$? pid n
    trap - EXIT INT TERM
    if [ -n "$CHILD_PID" ] && alive "$CHILD_PID"; then kill "$CHILD_PID" 2>/dev/null || true; fi
    for pid in "${ENVOY_PID[@]}"; do
        if alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
    done
    for pid in "${ENVOY_PID[@]}"; do
        for ((n = 0; n < 50; n++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    if [ "$CLUSTER_STARTED" -eq 1 ]; then
        CLUSTER_DIR="$CLUSTER_DIR_BENCH" bash "$here/cluster.sh" stop --port "$CLUSTER_PORT" 2>/dev/null || true
    fi
    exit "$rc"
}
bench_traps() {
    trap bench_cleanup EXIT
    trap 'log "ERROR: line $LINENO failed (exit $?): $BASH_COMMAND"' ERR
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Run a command in the background and wait for it, so that the trap can stop
# it (by PID) when we are interrupted.
run_child() {
    local rc=0
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}
