#!/usr/bin/env bash
# Instructions per request of the warp bench's cases, counted by callgrind inside bench-server's
# `measured` function (one request through the service, no sockets, no server loop):
# deterministic, unlike timings on a shared machine.
# Usage: examples/warp-demo/instructions.sh [case ...]   (env: REQUESTS=10000; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
REQUESTS=${REQUESTS:-10000}
cargo build --release -q -p warp-demo --bin bench-server
BIN=${CARGO_TARGET_DIR:-target}/release/bench-server
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(bare fixed_headers tollgate tollgate_no_headers tollgate_live tollgate_refusal)
printf "%-22s %12s %10s\n" case instructions "vs bare"
bare=""
for case in "${CASES[@]}"; do
  out=$(valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$BIN" count "$case" "$REQUESTS" 2>&1) || {
    echo "case $case failed:" >&2
    echo "$out" | grep -v '^==' >&2
    exit 1
  }
  ir=$(echo "$out" | awk '/refs:/ { gsub(",", "", $NF); print $NF }')
  [ -n "$ir" ] || { echo "callgrind counted nothing for $case" >&2; exit 1; }
  per=$((ir / REQUESTS))
  [ -z "$bare" ] && [ "$case" = bare ] && bare=$per
  diff=$([ -n "$bare" ] && echo "+$((per - bare))" || echo "-")
  printf "%-22s %12s %10s\n" "$case" "$per" "$diff"
done
