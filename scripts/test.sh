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
# Envoy versions: ENVOY_VERSIONS (default "1.40.0 1.39.3"). The whole suite
# runs against the first; a smoke set (loading, sharding, pipelining,
# redis-cli, local commands, prefix routes, mirroring) against each other one,
# with the same .so. SMOKE_ONLY_VERSIONS="" skips the smoke runs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "install"
bash "$here/install.sh"
read -r -a versions <<< "${ENVOY_VERSIONS:-1.40.0 1.39.3}"
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

for v in "${versions[@]:1}"; do
    step "smoke tests against Envoy $v (same .so)"
    ENVOY_BIN="$(bash "$here/envoy-bin.sh" "$v")" cargo test \
        --test proxy_core --test routing_policies -- \
        keys_land ten_thousand redis_cli local_commands plain_redis bad_configs \
        prefix_routes mirroring
done

step "done"
