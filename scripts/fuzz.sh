#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     default: every target, 60 s each
#
# Targets (fuzz/fuzz_targets/): request_decoder, session, splitter_merge.
# cargo fuzz needs nightly-only compiler flags; the machine has only the
# stable toolchain, so RUSTC_BOOTSTRAP=1 lets stable accept them.
#
# The corpus lives in fuzz/corpus/<target>/ (seed-* files are committed, the
# rest is what the fuzzer found and is git-ignored). A crash is saved under
# fuzz/artifacts/<target>/; to keep it as a regression, copy it to
# fuzz/regressions/<target>/ — `cargo test --test fuzz_regressions` replays
# that folder and the seeds through the same checks without libFuzzer.
# fuzz/resp.dict gives libFuzzer RESP tokens and command words.
# Extra libFuzzer flags: FUZZ_FLAGS="-jobs=2 -workers=2" scripts/fuzz.sh session.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

targets=(request_decoder session splitter_merge)
target="${1:-all}"
seconds="${2:-60}"
case "$target" in
    all) run=("${targets[@]}") ;;
    request_decoder | session | splitter_merge) run=("$target") ;;
    *) echo "unknown target '$target' (one of: all ${targets[*]})" >&2; exit 2 ;;
esac
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "SECONDS must be a number" >&2; exit 2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Longest input per target: request_decoder and session reach the 64 KiB
# inline/header limits; merge parts are at most 8 x 255 bytes.
max_len() {
    case "$1" in
        request_decoder) echo 140000 ;;
        session) echo 140000 ;;
        splitter_merge) echo 4096 ;;
    esac
}

export RUSTC_BOOTSTRAP=1
status=0
for t in "${run[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "=== $t: ${seconds}s"
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    if ! cargo fuzz run "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -dict=fuzz/resp.dict -print_final_stats=1 ${FUZZ_FLAGS:-}; then
        echo "=== $t: FAILED (crash input in fuzz/artifacts/$t/)"
        status=1
    fi
done
exit "$status"
