#!/usr/bin/env bash
# The whole test suite, as README.md gives it. Installs what the tests need (redis-server and
# chromium from Debian's packages) when it is missing; the tests start their own servers on free
# loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "test.sh: redis-server not found; installing Debian's redis-server package" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
    # Debian starts a system service; the tests use their own servers on free ports.
    $sudo_cmd systemctl stop redis-server >/dev/null 2>&1 || $sudo_cmd service redis-server stop >/dev/null 2>&1 || true
fi

# The dashboard's browser test (tests/tests/dashboard.rs) drives Debian's Chromium headless; in CI a
# missing browser fails it, so install it here as redis-server is.
if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: chromium not found; installing Debian's chromium package" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

cargo test --workspace --all-features "$@"
