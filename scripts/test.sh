#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run):
#   install.sh, cargo fmt --check, cargo clippy -D warnings, cargo build
#   (the cdylib the integration tests load into Envoy), cargo test.
#
# Works on a fresh clone, without a terminal (CI=true). Integration tests find
# Envoy through ENVOY_BIN, set here from scripts/envoy-bin.sh, and the module in
# target/debug (override with MODULE_DIR). Extra arguments go to `cargo test`,
# e.g. scripts/test.sh --test proxy_core -- --nocapture
#
# Envoy versions: ENVOY_VERSIONS (default "1.40.0 1.39.3 1.38.3"). The whole
# suite runs against the first; a smoke set (loading, sharding, pipelining,
# redis-cli, local commands, config validation, prefix routes, mirroring,
# statistics, the shipped standalone configs, the Istio EnvoyFilter) against
# each other one, with the same .so; ENVOY_VERSIONS=1.40.0
# runs no smoke set. The harness loads the module by name through
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH, the one way every version (1.38 too) has.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "install"
bash "$here/install.sh"
read -r -a versions <<< "${ENVOY_VERSIONS:-1.40.0 1.39.3 1.38.3}"
for v in "${versions[@]}"; do
    ENVOY_VERSION="$v" bash "$here/install.sh" >/dev/null
done
ENVOY_BIN="$(bash "$here/envoy-bin.sh" "${versions[0]}")"
export ENVOY_BIN
"$ENVOY_BIN" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo doc (doc comments: no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "cargo build (cdylib for the integration tests)"
cargo build
export MODULE_DIR="${MODULE_DIR:-$repo/target/debug}"
ls -l "$MODULE_DIR/libenvoy_redis_cluster.so"

step "ABI symbol check (Envoy ${versions[*]})"
bash "$here/check-symbols.sh" "$MODULE_DIR/libenvoy_redis_cluster.so" "${versions[@]}"

step "cargo test"
# Integration tests start Redis nodes and Envoys; two at a time keeps a
# 2-core machine from timing out its own tests.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo test "$@"

# The smoke set, by exact name; the run must report every one of them passed,
# so a renamed test fails it instead of silently dropping out of the set.
smoke_tests=(
    keys_land_on_the_owning_master_of_every_shard
    ten_thousand_pipelined_commands_come_back_complete_and_in_order
    redis_cli_works_through_the_proxy
    local_commands_are_answered_by_the_proxy
    plain_redis_crate_client_works_through_the_proxy
    bad_configs_are_refused_by_validate_mode
    prefix_routes_pick_the_longest_prefix_and_strip_it
    mirroring_is_fire_and_forget_and_resumes
    stats_from_module_threads_reach_envoy_with_traffic
    a_close_shows_at_once_from_1_39_and_with_the_next_traffic_on_1_38
    shipped_standalone_configs_are_accepted_by_envoy
    standalone_rw_split_mirror_bootstrap_shards_splits_reads_and_mirrors
    istio_envoyfilter_listener_shards_splits_reads_and_mirrors
)
smoke_log="$repo/target/smoke-tests.log"
for v in "${versions[@]:1}"; do
    step "smoke tests against Envoy $v (same .so)"
    ENVOY_BIN="$(bash "$here/envoy-bin.sh" "$v")" cargo test \
        --test proxy_core --test routing_policies --test stats \
        --test examples --test mesh_configs -- \
        --exact --color never "${smoke_tests[@]}" 2>&1 | tee "$smoke_log"
    passed="$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$smoke_log" |
        awk '{ n += $1 } END { print n + 0 }')"
    if [ "$passed" -ne "${#smoke_tests[@]}" ]; then
        echo "smoke tests against Envoy $v: $passed passed, expected ${#smoke_tests[@]}" \
            "(was one renamed? the names are in scripts/test.sh)" >&2
        exit 1
    fi
    echo "smoke tests against Envoy $v: all ${#smoke_tests[@]} passed"
done

step "done"
