#!/usr/bin/env bash
# Instructions per request (callgrind, inside `measured`: deterministic, unlike timings on this
# shared machine) and heap allocations per request of each case of the actix-web middleware
# benchmark, in process, no sockets: see src/bin/actix-bench-count.rs.
# Usage: examples/actix-demo/count.sh [case ...]   (env: REQUESTS=5000; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
REQUESTS=${REQUESTS:-5000}
cargo build --release -q -p actix-demo --bin actix-bench-count
BIN=${CARGO_TARGET_DIR:-target}/release/actix-bench-count
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(bare noop fixed_headers tollgate tollgate_no_headers tollgate_live governor governor_headers tollgate_refusal governor_refusal)
printf "%-22s %12s %9s %12s\n" case instructions "vs bare" allocations
bare=""
for case in "${CASES[@]}"; do
  out=$(valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$BIN" "$case" "$REQUESTS" 2>&1)
  ir=$(echo "$out" | awk '/refs:/ { gsub(",", "", $NF); print $NF }')
  per=$((ir / REQUESTS))
  [ "$case" = bare ] && bare=$per
  allocs=$(echo "$out" | sed -n 's/.*; \([0-9.]*\) heap allocations per request/\1/p')
  delta=$([ -n "$bare" ] && echo "+$((per - bare))" || echo "-")
  printf "%-22s %12s %9s %12s\n" "$case" "$per" "$delta" "$allocs"
done
