#!/usr/bin/env bash
# Linearizability under topology changes, many times in a row.
#
#   scripts/stress.sh [RUNS] [SCENARIO_FILTER]
#
# Runs each scenario of tests/linearizability.rs RUNS times (default 20):
# live reshard both ways, node added and removed, master kill -9 with
# promotion, replica killed, master stalled (SIGSTOP) past op_timeout. Every
# run checks its recorded history (see tests/linearizability/checker.rs) and
# fails on any stale read, read of an unwritten value or lost acknowledged
# write; writes Redis itself loses on failover are counted apart. At the end a
# table sums the runs per scenario. CI runs each scenario once (cargo test);
# this script is for the long runs. Logs: target/stress/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

runs="${1:-20}"
filter="${2:-}"
bash "$here/install.sh" >/dev/null
export ENVOY_BIN="${ENVOY_BIN:-$(bash "$here/envoy-bin.sh" 1.40.0)}"
cargo build --quiet
cargo test --quiet --test linearizability --no-run
export MODULE_DIR="${MODULE_DIR:-$repo/target/debug}"

scenarios=(live_reshard_both_ways node_added_given_slots_and_removed
    master_killed_and_replica_promoted replica_killed_and_restarted
    master_stalled_past_op_timeout)
out="$repo/target/stress"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
failed=0
for s in "${scenarios[@]}"; do
    [[ -n "$filter" && "$s" != *"$filter"* ]] && continue
    for i in $(seq 1 "$runs"); do
        log="$out/$s-$i.log"
        if cargo test --quiet --test linearizability "$s" -- --exact --nocapture >"$log" 2>&1; then
            status=ok
        else
            status=FAILED
            failed=$((failed + 1))
        fi
        line="$(grep -m1 '^LINEARIZABILITY ' "$log" || echo "LINEARIZABILITY scenario=$s no-summary")"
        echo "$status run=$i $line" | tee -a "$summary"
    done
done

echo
echo "| scenario | runs | failed runs | operations checked | stale reads | reads of unwritten values | lost acknowledged writes | lost by Redis on failover |"
echo "| --- | --: | --: | --: | --: | --: | --: | --: |"
awk '
    {
        st = $1; sc = ""; delete f
        for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        sc = f["scenario"]; runs[sc]++; if (st != "ok") bad[sc]++
        ops[sc] += f["operations"]; stale[sc] += f["stale_reads"]; fut[sc] += f["future_reads"]
        lost[sc] += f["lost_acked_writes"]; redis[sc] += f["redis_failover_loss"]
        if (!(sc in order)) { order[sc] = ++n; names[n] = sc }
    }
    END {
        for (i = 1; i <= n; i++) { s = names[i]
            printf "| %s | %d | %d | %d | %d | %d | %d | %d |\n", s, runs[s], bad[s], ops[s], stale[s], fut[s], lost[s], redis[s]
        }
    }' "$summary"
if [ "$failed" -gt 0 ]; then
    echo "stress: $failed failed run(s); logs in $out" >&2
    exit 1
fi
