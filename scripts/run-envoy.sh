#!/usr/bin/env bash
# Run the bare Envoy binary with a bootstrap config and our dynamic module.
#
#   scripts/run-envoy.sh CONFIG [-- ENVOY_ARGS...]         foreground (exec; Ctrl-C stops it)
#   scripts/run-envoy.sh start CONFIG [-- ENVOY_ARGS...]   background; waits until Envoy serves
#   scripts/run-envoy.sh stop                              stop the Envoy recorded in the PID file
#   scripts/run-envoy.sh status
#
# Environment:
#   MODULE_DIR     directory holding libenvoy_redis_cluster.so (default <repo>/target/release);
#                  becomes ENVOY_DYNAMIC_MODULES_SEARCH_PATH
#   ENVOY_BIN      Envoy binary (default: scripts/envoy-bin.sh $ENVOY_VERSION)
#   ENVOY_VERSION  Envoy version for envoy-bin.sh (default 1.40.0)
#   ENVOY_RUN_DIR  where envoy.pid and envoy.log go (default <repo>/.run/envoy)
#   ENVOY_LOG_LEVEL  Envoy's -l (default info)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
RUN_DIR="${ENVOY_RUN_DIR:-$repo/.run/envoy}"
PID_FILE="$RUN_DIR/envoy.pid"
LOG_FILE="$RUN_DIR/envoy.log"

log() { echo "[envoy] $*" >&2; }
die() { log "$*"; exit 1; }

alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}

recorded_pid() { [ -s "$PID_FILE" ] && cat "$PID_FILE"; }

do_stop() {
    local pid n
    pid="$(recorded_pid)" || { log "not running (no $PID_FILE)"; return 0; }
    if alive "$pid"; then
        kill "$pid" 2>/dev/null || true
        for ((n = 0; n < 100; n++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
        log "stopped pid $pid"
    fi
    rm -f "$PID_FILE"
}

# Sets CONFIG, MODULE_DIR, BIN and EXTRA from the arguments.
prepare() {
    [ $# -ge 1 ] || die "config file missing"
    CONFIG="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    [ -f "$CONFIG" ] || die "no such config: $1"
    shift
    [ "${1:-}" = "--" ] && shift
    EXTRA=("$@")
    MODULE_DIR="$(cd "${MODULE_DIR:-$repo/target/release}" 2>/dev/null && pwd)" ||
        die "module dir ${MODULE_DIR:-$repo/target/release} does not exist: build with cargo build --release"
    [ -f "$MODULE_DIR/libenvoy_redis_cluster.so" ] ||
        log "warning: $MODULE_DIR/libenvoy_redis_cluster.so not found"
    BIN="${ENVOY_BIN:-$(bash "$here/envoy-bin.sh" "${ENVOY_VERSION:-1.40.0}")}"
    [ -x "$BIN" ] || die "envoy binary not executable: $BIN"
    mkdir -p "$RUN_DIR"
    ARGS=(-c "$CONFIG" --disable-hot-restart -l "${ENVOY_LOG_LEVEL:-info}" "${EXTRA[@]}")
}


do_foreground() {
    prepare "$@"
    export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR"
    log "exec $BIN -c $CONFIG (module from $MODULE_DIR)"
    echo $$ >"$PID_FILE" # exec keeps the PID: this is Envoy's
    exec "$BIN" "${ARGS[@]}"
}

do_start() {
    prepare "$@"
    local pid n
    if pid="$(recorded_pid)" && alive "$pid"; then
        log "already running (pid $pid); stopping it first"
        do_stop
    fi
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR" \
        nohup "$BIN" "${ARGS[@]}" >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    # Envoy logs this once its listeners are up (at -l info or more verbose).
    for ((n = 0; n < 300; n++)); do
        alive "$pid" || { tail -n 30 "$LOG_FILE" >&2; rm -f "$PID_FILE"; die "envoy exited; log: $LOG_FILE"; }
        grep -q 'starting main dispatch loop' "$LOG_FILE" 2>/dev/null && break
        sleep 0.1
    done
    log "running: pid $pid, config $CONFIG, module from $MODULE_DIR, log $LOG_FILE"
}

do_status() {
    local pid
    if pid="$(recorded_pid)" && alive "$pid"; then
        echo "envoy running: pid $pid (log $LOG_FILE)"
    else
        echo "envoy not running"
        return 1
    fi
}

case "${1:-}" in
    start) shift; do_start "$@" ;;
    stop) do_stop ;;
    status) do_status ;;
    "" | -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
    *) do_foreground "$@" ;;
esac
