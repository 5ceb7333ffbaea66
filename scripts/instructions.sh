#!/usr/bin/env bash
# Instructions per request of each case of the middleware bench (bare axum, a no-op layer,
# tollgate, tower_governor; allow and refusal paths; inside the router and around it; and the two
# references around it: fixed headers alone, tollgate's KeyedLimiter alone), counted
# by callgrind inside the bench's `measured` function: deterministic, unlike timings on a shared
# machine.
# Usage: scripts/instructions.sh [case ...]   (env: REQUESTS=10000; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
REQUESTS=${REQUESTS:-10000}
# The default build a user gets (no `metrics` feature: with it and no recorder installed, about
# 25 instructions more per request).
BIN=$(cargo bench -p tollgate-tower --features axum,tungstenite --bench middleware --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "could not build the middleware bench" >&2; exit 1; }
CASES=("$@")
if [ ${#CASES[@]} -eq 0 ]; then
  CASES=(bare no-op_layer tollgate tollgate_no_headers tollgate_wrapped_bodies tollgate_live tower_governor
    tower_governor_headers tollgate_refusal tower_governor_refusal fixed_headers around/no-op_layer around/tollgate
    around/tollgate_no_headers around/tollgate_live around/tower_governor around/tower_governor_headers around/tollgate_refusal
    around/tower_governor_refusal around/fixed_headers around/keyed_limiter)
fi
printf "%-30s %14s %8s %14s\n" case instructions "vs bare" allocations
bare=""
for case in "${CASES[@]}"; do
  out=$(COUNT_CASE="$case" COUNT_REQUESTS="$REQUESTS" valgrind --tool=callgrind \
    --toggle-collect='*measured*' --callgrind-out-file=/dev/null "$BIN" 2>&1) || {
    echo "case $case failed:" >&2
    echo "$out" | grep -v '^==' >&2
    exit 1
  }
  ir=$(echo "$out" | awk '/refs:/ { gsub(",", "", $NF); print $NF }')
  [ -n "$ir" ] || { echo "callgrind counted nothing for $case" >&2; exit 1; }
  per=$((ir / REQUESTS))
  [ -z "$bare" ] && [ "$case" = bare ] && bare=$per
  allocs=$(echo "$out" | sed -n 's/.*: \([0-9.]*\) heap allocations per request/\1/p')
  ratio=$([ -n "$bare" ] && awk -v a="$per" -v b="$bare" 'BEGIN { printf "%.3fx", a / b }' || echo "-")
  printf "%-30s %14s %8s %14s\n" "$case" "$per" "$ratio" "$allocs"
done
