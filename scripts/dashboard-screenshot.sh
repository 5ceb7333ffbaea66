#!/usr/bin/env bash
# The README's dashboard screenshots (docs/dashboard.png, docs/dashboard-dark.png), made by the
# browser test (tests/tests/dashboard.rs) against the axum demo under a mixed load for 40 s, in
# Debian's Chromium (installed when missing, as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
mkdir -p docs
TOLLGATE_DASHBOARD_SCREENSHOT="$PWD/docs/dashboard.png" \
    cargo test -p tollgate-conformance --test dashboard -- --nocapture
