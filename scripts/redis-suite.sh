#!/usr/bin/env bash
# Redis's own test suite as the conformance yardstick.
#
#   scripts/redis-suite.sh [options] [unit/x unit/y ...]
#
# Runs the Tcl test suite of the installed redis-server's own source (Debian
# source package `redis`, same version) against
#   - the reference: one Redis node in cluster mode owning all 16384 slots
#     (what Redis's CI uses for `--cluster-mode` against an external server);
#   - the proxy: Envoy with this module in front of a 3-master cluster;
# one after the other (never in parallel), and prints per unit how many tests
# passed / failed / errored on each side, then every test that passed on the
# reference but not through the proxy.
#
# Harness flags (both sides): --host --port --singledb --cluster-mode --durable
# --tags "-needs:debug -needs:repl", one harness run per unit (--single).
# needs:debug tests use DEBUG (a node-internal command the proxy refuses);
# needs:repl tests read a node's replication stream with SYNC (node-level).
#
# Nothing of the Redis source is committed: it is downloaded at run time with
# `apt-get source --download-only` through a temporary deb-src list derived
# from the machine's own Debian apt sources (separate sources and lists
# directories passed with -o Dir::…; the system's apt configuration and
# caches are not touched) and unpacked with dpkg-source into a cache dir.
#
# Options:
#   --only reference|proxy   run one side only
#   --no-admin-setting       leave settings.allow_admin_commands out of the
#                            module's config (for builds before it existed;
#                            CONFIG SET is then refused through the proxy)
#   --timeout S              harness --timeout: seconds without progress before
#                            it gives up on a unit (default 180)
#   --list-units             print the default units and exit
#   --report DIR             print the table again from the logs of an
#                            earlier run (DIR: target/redis-suite/run-…)
# Environment:
#   REDIS_SRC_CACHE  where the source is unpacked
#                    (default ~/.cache/envoy-redis-cluster/redis-src)
#   MODULE_DIR       directory of libenvoy_redis_cluster.so (default <repo>/target/debug)
#   ENVOY_BIN        Envoy binary (default: scripts/envoy-bin.sh 1.40.0)
#   SUITE_OUT        logs and results (default <repo>/target/redis-suite)
#
# Needs tclsh (Debian package tcl), dpkg-source (dpkg-dev), redis-server,
# redis-cli and Envoy (scripts/install.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

# Units that make sense through a proxy: data types and commands a client
# sends, plus the introspection a client sees (INFO, CONFIG GET, CLIENT ...),
# scripting, functions and transactions. pubsub/pubsubshard/tracking are in so
# that what is missing shows (separate issues).
#
# Left out, because they test the server process or one node's internals,
# not what a client gets through any proxy:
#   unit/cluster/*, unit/cluster, unit/cluster-scripting  a node's cluster bus
#       and CLUSTER admin (the proxy presents itself as one node)
#   integration/*  replication, AOF/RDB, restarts: they spawn servers
#   unit/aofrw, unit/shutdown, unit/oom-score-adj, unit/tls, unit/networking,
#   unit/querybuf, unit/pendingquerybuf, unit/client-eviction,
#   unit/replybufsize, unit/obuf-limits, unit/limits, unit/violations,
#   unit/memefficiency, unit/maxmemory, unit/lazyfree  one process's memory,
#       buffers, persistence or limits (a 3-node cluster has three of each)
#   unit/wait  counts a node's replicas
#   unit/acl, unit/acl-v2, unit/auth  every test is tagged external:skip
#       (each starts a server with its own ACL file or requirepass); ACL
#       users through the proxy are covered by unit/scripting's `Script ACL
#       check`, unit/other's `RESET clears authenticated state` and
#       tests/auth.rs
#   unit/latency-monitor, unit/slowlog  per-node diagnostics
#   unit/printver  prints the version, no tests
#   unit/info, unit/pubsubshard  every test is tagged external:skip
DEFAULT_UNITS=(
    unit/type/string unit/type/incr unit/type/list unit/type/list-2
    unit/type/list-3 unit/type/set unit/type/zset unit/type/hash
    unit/type/stream unit/type/stream-cgroups
    unit/keyspace unit/scan unit/expire unit/sort unit/dump unit/other
    unit/protocol unit/quit unit/multi unit/info-command
    unit/introspection unit/introspection-2 unit/scripting unit/functions
    unit/bitops unit/bitfield unit/geo unit/hyperloglog unit/pause
    unit/pubsub unit/tracking
)
TAGS="-needs:debug -needs:repl"

ONLY=""
REPORT_DIR=""
ADMIN_SETTING=1
HARNESS_TIMEOUT=180
UNITS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY="$2"; shift 2 ;;
        --no-admin-setting) ADMIN_SETTING=0; shift ;;
        --timeout) HARNESS_TIMEOUT="$2"; shift 2 ;;
        --list-units) printf '%s\n' "${DEFAULT_UNITS[@]}"; exit 0 ;;
        --report) REPORT_DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        unit/*) UNITS+=("$1"); shift ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#UNITS[@]} -gt 0 ] || UNITS=("${DEFAULT_UNITS[@]}")
case "$ONLY" in "" | reference | proxy) ;; *) echo "--only reference|proxy" >&2; exit 2 ;; esac

CACHE="${REDIS_SRC_CACHE:-$HOME/.cache/envoy-redis-cluster/redis-src}"
MODULE_DIR="${MODULE_DIR:-$repo/target/debug}"
OUT="${SUITE_OUT:-$repo/target/redis-suite}"

log() { echo "[redis-suite] $*" >&2; }
die() { log "$*"; exit 1; }

for tool in tclsh redis-server redis-cli dpkg-query; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (tclsh: apt-get install tcl; redis: scripts/install.sh)"
done

# --- cleanup: only what this script started ----------------------------------
PIDS=()
TMP="$(mktemp -d)"
cleanup() {
    local pid n
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for ((n = 0; n < 50; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the Redis source ----------------------------------------------------------

# One-line deb-src entries for every Debian archive ("…/debian",
# "…/debian-security") the machine's apt uses, from sources.list, *.list and
# deb822 *.sources files.
debian_src_lines() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {
                 line = $0; sub(/^[ \t]*deb/, "deb-src", line)
                 n = split(line, w, /[ \t]+/)
                 for (i = 2; i <= n; i++) if (w[i] !~ /^\[/ && w[i] !~ /\]$/ && w[i] ~ /:\/\//) {
                     if (w[i] ~ /\/debian(-security)?\/?$/) print line
                     break
                 }
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'function flush(   n, m, i, j, opt) {
                 if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
                     n = split(uris, U, " "); m = split(suites, S, " ")
                     opt = (signed != "" && signed !~ /BEGIN/) ? "[signed-by=" signed "] " : ""
                     for (i = 1; i <= n; i++) if (U[i] ~ /\/debian(-security)?\/?$/)
                         for (j = 1; j <= m; j++) print "deb-src " opt U[i] " " S[j] " " comps
                 }
                 types = uris = suites = comps = signed = enabled = ""
             }
             /^[ \t]*#/ { next }
             /^[ \t]*$/ { flush(); next }
             /^[ \t]/ { next }                  # continuation (an inline key)
             {
                 key = tolower($1); sub(/:$/, "", key)
                 val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                 if (key == "types") types = val
                 else if (key == "uris") uris = val
                 else if (key == "suites") suites = val
                 else if (key == "components") comps = val
                 else if (key == "signed-by") signed = val
                 else if (key == "enabled") enabled = val
             }
             END { flush() }' "$f"
    done
}

# Sets SRC to an unpacked source tree of the installed redis-server's version.
fetch_source() {
    local version dir work lists apt_opts
    version="$(dpkg-query -W -f='${source:Version}' redis-server 2>/dev/null)" ||
        die "redis-server is not an installed Debian package: cannot know which source to fetch"
    dir="$CACHE/redis-${version//[:~]/_}"
    SRC="$dir/src"
    if [ -f "$dir/.complete" ]; then
        log "Redis source $version: $SRC (cached)"
        return
    fi
    command -v dpkg-source >/dev/null 2>&1 || die "dpkg-source not found: apt-get install dpkg-dev"
    log "downloading the source of redis $version"
    work="$TMP/apt"
    lists="$work/lists"
    mkdir -p "$work/sources.list.d" "$lists/partial" "$work/cache/archives/partial" "$work/dl"
    debian_src_lines | sort -u >"$work/sources.list"
    [ -s "$work/sources.list" ] || die "no Debian archive found in /etc/apt/sources.list*"
    sed 's/^/[redis-suite]   /' "$work/sources.list" >&2
    apt_opts=(
        -o "Dir::Etc::sourcelist=$work/sources.list"
        -o "Dir::Etc::sourceparts=$work/sources.list.d"
        -o "Dir::State::Lists=$lists"
        -o "Dir::Cache=$work/cache"
        -o "APT::Sandbox::User=$(id -un)"
    )
    apt-get "${apt_opts[@]}" update -qq >&2 || die "apt-get update (deb-src lists) failed"
    (cd "$work/dl" && apt-get "${apt_opts[@]}" source --download-only "redis=$version" >&2) ||
        die "apt-get source redis=$version failed"
    rm -rf "$dir"
    mkdir -p "$dir"
    # dpkg-source applies Debian's patches (the installed server has them).
    dpkg-source -x "$work/dl"/redis_*.dsc "$dir/src" >"$dir/dpkg-source.log" 2>&1 ||
        { cat "$dir/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
    # A few tests exec src/redis-server or src/redis-cli: the installed ones.
    ln -sf "$(command -v redis-server)" "$SRC/src/redis-server"
    ln -sf "$(command -v redis-cli)" "$SRC/src/redis-cli"
    echo "$version" >"$dir/.complete"
    log "Redis source $version unpacked in $SRC"
}

# --- nodes and Envoy -------------------------------------------------------------

# True when 127.0.0.1:$1 can be bound now.
bindable() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# FREE := a free port P, with P+50 free too (its cluster bus), from a random start
# in 10000-20999: below the ephemeral range (32768+), whose ports outgoing
# connections take, and away from the harness's own 21079-29111.
BUS_OFFSET=50
TAKEN=" "
free_port() {
    local p n
    for ((n = 0; n < 500; n++)); do
        p=$((10000 + RANDOM % 11000))
        case "$TAKEN" in *" $p "* | *" $((p + BUS_OFFSET)) "* | *" $((p - BUS_OFFSET)) "*) continue ;; esac
        if bindable "$p" && bindable $((p + BUS_OFFSET)); then
            TAKEN="$TAKEN$p "
            FREE="$p"
            return
        fi
    done
    die "no free port found"
}

# The harness's own test server listens on the first free port P of
# baseport-32 .. baseport-1 with P+10000 free too (default baseport 21111,
# so 21079): two runs at once would collide there, and its check misses a
# port taken on 127.0.0.1 only. HARNESS_BASEPORT := P+32 for a P known free.
harness_baseport() {
    local p n
    for ((n = 0; n < 500; n++)); do
        p=$((10000 + RANDOM % 11000))
        case "$TAKEN" in *" $p "*) continue ;; esac
        if bindable "$p" && bindable $((p + 10000)); then
            TAKEN="$TAKEN$p "
            HARNESS_BASEPORT=$((p + 32))
            return
        fi
    done
    die "no free port for the harness"
}

# Same configuration for the reference and the cluster's nodes, so that only
# the proxy differs. A long node timeout: a test that keeps one node busy
# (a script loop, CLIENT PAUSE) must not make the others mark it failed.
start_node() {
    local port="$1" d="$RUN/nodes/$1" n
    mkdir -p "$d"
    cat >"$d/redis.conf" <<CONF
port $port
bind 127.0.0.1
protected-mode no
cluster-enabled yes
cluster-port $((port + BUS_OFFSET))
cluster-config-file $d/nodes.conf
cluster-node-timeout 30000
cluster-require-full-coverage no
save ""
appendonly no
dir $d
logfile $d/redis.log
CONF
    redis-server "$d/redis.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    for ((n = 0; n < 100; n++)); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return
        sleep 0.1
    done
    die "redis-server on $port did not start (see $d/redis.log)"
}

cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

wait_cluster_ok() {
    local p n
    for ((n = 0; n < 300; n++)); do
        for p in "$@"; do cluster_ok "$p" || { sleep 0.1; continue 2; }; done
        return
    done
    die "cluster on $* not ok within 30 s"
}

start_reference() {
    free_port
    REF_PORT="$FREE"
    start_node "$REF_PORT"
    redis-cli -p "$REF_PORT" cluster addslotsrange 0 16383 >/dev/null
    wait_cluster_ok "$REF_PORT"
    log "reference: one node owning all slots on 127.0.0.1:$REF_PORT"
}

start_cluster() {
    local p addrs=()
    MASTER_PORTS=()
    for _ in 1 2 3; do
        free_port
        p="$FREE"
        start_node "$p"
        MASTER_PORTS+=("$p")
        addrs+=("127.0.0.1:$p")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
        >"$RUN/nodes/create.log" 2>&1 || { cat "$RUN/nodes/create.log" >&2; die "cluster create failed"; }
    wait_cluster_ok "${MASTER_PORTS[@]}"
    log "cluster: 3 masters on ${addrs[*]}"
}

start_envoy() {
    local bin admin_port seeds="" p n settings
    bin="${ENVOY_BIN:-$(bash "$here/envoy-bin.sh" 1.40.0)}"
    [ -x "$bin" ] || die "envoy binary not executable: $bin"
    [ -f "$MODULE_DIR/libenvoy_redis_cluster.so" ] ||
        die "$MODULE_DIR/libenvoy_redis_cluster.so not found: cargo build (or set MODULE_DIR)"
    free_port
    PROXY_PORT="$FREE"
    free_port
    admin_port="$FREE"
    for p in "${MASTER_PORTS[@]}"; do seeds="$seeds${seeds:+, }\"127.0.0.1:$p\""; done
    settings="op_timeout: 5s"
    [ "$ADMIN_SETTING" -eq 1 ] && settings="$settings, allow_admin_commands: true"
    mkdir -p "$RUN/envoy"
    cat >"$RUN/envoy/envoy.yaml" <<YAML
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $admin_port } }
static_resources:
  listeners:
    - name: redis
      address: { socket_address: { address: 127.0.0.1, port_value: $PROXY_PORT } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.dynamic_modules
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter
                dynamic_module_config: { name: envoy_redis_cluster }
                filter_name: redis_cluster
                terminal_filter: true
                filter_config:
                  "@type": type.googleapis.com/google.protobuf.Struct
                  value:
                    stat_prefix: redis
                    settings: { $settings }
                    clusters: { main: { seeds: [$seeds] } }
                    prefix_routes: { catch_all_route: { cluster: main } }
YAML
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$MODULE_DIR" "$bin" -c "$RUN/envoy/envoy.yaml" \
        --disable-hot-restart --concurrency 1 -l "${ENVOY_LOG_LEVEL:-warning}" >"$RUN/envoy/envoy.log" 2>&1 </dev/null &
    PIDS+=($!)
    for ((n = 0; n < 300; n++)); do
        [ "$(redis-cli -p "$PROXY_PORT" ping 2>/dev/null)" = PONG ] &&
            redis-cli -p "$PROXY_PORT" dbsize 2>/dev/null | grep -q '^[0-9]' && {
            log "proxy: Envoy on 127.0.0.1:$PROXY_PORT (module from $MODULE_DIR, log $RUN/envoy/envoy.log)"
            return
        }
        sleep 0.1
    done
    tail -n 30 "$RUN/envoy/envoy.log" >&2
    die "Envoy did not serve on $PROXY_PORT"
}

# Against an external server the harness cannot start a fresh one per
# test file, and some files leave settings behind (unit/type/list sets
# proto-max-bulk-len to 10gb, which then hangs unit/protocol's "Out of range
# multibulk payload length"). So every unit starts on nodes reset directly
# (never through the proxy): no data, scripts, functions or client pause, and
# every setting back to its value at start.
config_dump() { redis-cli -p "$1" config get '*' | paste -d '\t' - - | LC_ALL=C sort; }

snapshot_nodes() {
    local p
    for p in "$@"; do config_dump "$p" >"$RUN/nodes/$p/config.start"; done
}

reset_nodes() {
    local p line key
    for p in "$@"; do
        redis-cli -p "$p" client unpause >/dev/null 2>&1 || true
        redis-cli -p "$p" script kill >/dev/null 2>&1 || true
        redis-cli -p "$p" function kill >/dev/null 2>&1 || true
        config_dump "$p" >"$TMP/config.now"
        while IFS= read -r line; do
            key="${line%%$'\t'*}"
            redis-cli -p "$p" config set "$key" "${line#*$'\t'}" >/dev/null 2>&1 || true
        done < <(LC_ALL=C comm -23 "$RUN/nodes/$p/config.start" "$TMP/config.now")
        redis-cli -p "$p" flushall >/dev/null
        redis-cli -p "$p" script flush >/dev/null
        redis-cli -p "$p" function flush >/dev/null
    done
}

# --- running and reading the harness -----------------------------------------------

# Runs every unit against 127.0.0.1:$2; results go to $RUN/$1/<unit>.{log,res}.
# A .res file has one line per test: "ok NAME", "fail NAME" (an assertion),
# "error NAME" (the test raised an error, e.g. an unexpected error reply), and
# "abort" when the unit stopped early: an exception outside any test, or the
# harness's TIMEOUT (no progress for --timeout seconds).
run_side() {
    local side="$1" port="$2" unit log res
    shift 2
    mkdir -p "$RUN/$side"
    snapshot_nodes "$@"
    harness_baseport
    for unit in "${UNITS[@]}"; do
        log="$RUN/$side/${unit//\//_}.log"
        res="${log%.log}.res"
        log "$side: $unit"
        reset_nodes "$@"
        (cd "$HARNESS" && TERM=dumb tclsh tests/test_helper.tcl --host 127.0.0.1 --port "$port" \
            --singledb --cluster-mode --durable --clients 1 --timeout "$HARNESS_TIMEOUT" \
            --baseport "$HARNESS_BASEPORT" \
            --tags "$TAGS" --single "$unit") >"$log" 2>&1 </dev/null || true
        parse_log "$log" >"$res"
    done
}

# An [err] is followed by its message lines; a Tcl error (not an assertion)
# also has its stack ("while executing" / "invoked from within").
parse_log() {
    awk 'function done() { if (pending != "") print (stack ? "error " : "fail ") pending; pending = ""; stack = 0 }
         /^\[ok\]: / { done(); s = substr($0, 7); sub(/ \([0-9]+ ms\)$/, "", s); print "ok " s; next }
         # "[err]: NAME in tests/unit/x.tcl"; without the file it is an error
         # outside any test (--durable reports it so) and the unit ended.
         /^\[err\]: / {
             done()
             if ($0 !~ / in tests\/[^ ]+\.tcl$/) { print "abort"; next }
             pending = substr($0, 8); sub(/ in tests\/[^ ]+\.tcl$/, "", pending); next
         }
         /^\[(exception|TIMEOUT)\]: / { done(); print "abort"; next }
         /^\[/ || /^(===|\*\*\*|!!!|The End|Killing|Cleanup)/ { done(); next }
         pending != "" && /(while executing|invoked from within)/ { stack = 1 }
         END { done() }' "$1"
}

count() { if [ -f "$2" ]; then grep -c "^$1" "$2" || true; else echo 0; fi; }

report() {
    local unit base r p total_r=(0 0 0) total_p=(0 0 0) a b c d e f aborted
    printf '\n%-28s %25s   %25s\n' "" "reference" "proxy"
    printf '%-28s %8s %8s %8s   %8s %8s %8s\n' unit passed failed errors passed failed errors
    for unit in "${UNITS[@]}"; do
        base="${unit//\//_}.res"
        r="$RUN/reference/$base"
        p="$RUN/proxy/$base"
        a=$(count "ok " "$r"); b=$(count "fail " "$r"); c=$(count "error " "$r")
        d=$(count "ok " "$p"); e=$(count "fail " "$p"); f=$(count "error " "$p")
        aborted=""
        grep -q '^abort' "$r" 2>/dev/null && aborted="$aborted ref-aborted"
        grep -q '^abort' "$p" 2>/dev/null && aborted="$aborted proxy-aborted"
        printf '%-28s %8s %8s %8s   %8s %8s %8s%s\n' "$unit" "$a" "$b" "$c" "$d" "$e" "$f" "$aborted"
        total_r=($((total_r[0] + a)) $((total_r[1] + b)) $((total_r[2] + c)))
        total_p=($((total_p[0] + d)) $((total_p[1] + e)) $((total_p[2] + f)))
    done
    printf '%-28s %8s %8s %8s   %8s %8s %8s\n' TOTAL "${total_r[@]}" "${total_p[@]}"
    [ -z "$ONLY" ] || return 0
    echo
    echo "Passed on the reference, not through the proxy (unit: test):"
    local missing=0
    for unit in "${UNITS[@]}"; do
        base="${unit//\//_}.res"
        # A name may occur several times in a unit: compare counts.
        while IFS= read -r name; do
            echo "  $unit: $name"
            missing=$((missing + 1))
        done < <(awk 'FNR == NR { if (sub(/^ok /, "")) want[$0]++; next }
                      sub(/^ok /, "") { got[$0]++ }
                      END { for (n in want) for (i = got[n]; i < want[n]; i++) print n }' \
            "$RUN/reference/$base" "$RUN/proxy/$base" 2>/dev/null | sort)
    done
    echo "  ($missing in all)"
}

if [ -n "$REPORT_DIR" ]; then
    RUN="$REPORT_DIR"
    # The units that run has logs for, in the usual order.
    ran=()
    for unit in "${UNITS[@]}"; do
        ls "$RUN"/*/"${unit//\//_}.log" >/dev/null 2>&1 && ran+=("$unit")
    done
    UNITS=("${ran[@]}")
    for log in "$RUN"/*/*.log; do parse_log "$log" >"${log%.log}.res"; done
    report
    exit 0
fi

fetch_source
RUN="$OUT/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
# The harness writes under tests/tmp: each run gets its own copy of tests/
# (3 MB), so two runs never share it.
HARNESS="$RUN/harness"
mkdir -p "$HARNESS"
cp -r "$SRC/tests" "$HARNESS/tests"
ln -s "$SRC/src" "$HARNESS/src"
log "logs in $RUN"
if [ "$ONLY" != proxy ]; then
    start_reference
    run_side reference "$REF_PORT" "$REF_PORT"
fi
if [ "$ONLY" != reference ]; then
    start_cluster
    start_envoy
    run_side proxy "$PROXY_PORT" "${MASTER_PORTS[@]}"
fi
report | tee "$RUN/summary.txt"
