#!/usr/bin/env bash
# Fail if the module imports an envoy_dynamic_module_* function that one of
# the supported Envoy binaries does not export: such a module would fail to
# load there (dlopen: undefined symbol). Names each missing symbol.
#
#   scripts/check-symbols.sh [path/to/libenvoy_redis_cluster.so] [VERSION...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
so="${1:-$here/../target/debug/libenvoy_redis_cluster.so}"
shift || true
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.40.0 1.39.3 1.38.3)

command -v nm >/dev/null || { apt-get update -qq && apt-get install -y -qq binutils; }
imports="$(nm -D --undefined-only "$so" | awk '{print $NF}' | grep '^envoy_dynamic_module_' | sort -u)"
[ -n "$imports" ] || { echo "check-symbols: no Envoy imports found in $so" >&2; exit 1; }
status=0
for v in "${versions[@]}"; do
    bin="$(bash "$here/envoy-bin.sh" "$v")"
    exports="$(nm -D --defined-only "$bin" | awk '{print $NF}' | grep '^envoy_dynamic_module_' | sort -u)"
    missing="$(comm -23 <(echo "$imports") <(echo "$exports"))"
    if [ -n "$missing" ]; then
        echo "check-symbols: Envoy $v lacks these imported functions:" >&2
        echo "$missing" | sed 's/^/  /' >&2
        status=1
    else
        echo "check-symbols: Envoy $v exports all $(echo "$imports" | wc -l) functions the module imports"
    fi
done
exit $status
