#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run):
#   install.sh, cargo fmt --check, cargo clippy -D warnings, cargo build
#   (the cdylib the integration tests load into Envoy), cargo test.
#
# Works on a fresh clone, without a terminal (CI=true). Integration tests find
# Envoy through ENVOY_BIN, set here from scripts/envoy-bin.sh, and the module in
# target/debug (override with MODULE_DIR). Extra arguments go to `cargo test`,
# e.g. scripts/test.sh --test proxy_core -- --nocapture
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
step() { echo; echo "=== $* ($(($(date +%s) - start)) s)"; }

step "install"
bash "$here/install.sh"
ENVOY_BIN="$(bash "$here/envoy-bin.sh" "${ENVOY_VERSION:-1.40.0}")"
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

step "cargo test"
# Integration tests start Redis nodes and Envoys; two at a time keeps a
# 2-core machine from timing out its own tests.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo test "$@"

step "done"
