#!/usr/bin/env bash
# The load benchmark: the same minimal axum app bare, with tollgate and with tower_governor, on the
# allow path (a quota nothing exceeds) and the refusal path (every request over the limit), with wrk
# on 127.0.0.1 only; then WebSocket messages per second through a bare and a wrapped socket.
# Usage: examples/axum-demo/bench.sh   (env: DURATION=5s THREADS=2 CONNECTIONS=50 PORT=4100)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
PORT=${PORT:-4100}
ROUNDS=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p axum-demo --bin bench-server
BIN=target/release/bench-server
"$BIN" http "$PORT" > /tmp/tollgate-bench-server.log 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q ready /tmp/tollgate-bench-server.log 2>/dev/null && break; sleep 0.1; done

rps() { # url -> requests per second
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'
}
status() { curl -s -o /dev/null "$1"; curl -s -o /dev/null -w '%{http_code}' "$1"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }

echo "refusal-path status codes: tollgate $(status http://127.0.0.1:$((PORT+2))/) governor $(status http://127.0.0.1:$((PORT+4))/)"
# Rounds interleave the five servers so that a disturbance of the shared machine hits them alike;
# each keeps its best round.
bare=0 noop=0 tg_bare_headers=0 tg_allow=0 gov_allow=0 tg_refuse=0 gov_refuse=0
for _ in $(seq 1 "$ROUNDS"); do
  bare=$(max "$bare" "$(rps "http://127.0.0.1:$PORT/")")
  noop=$(max "$noop" "$(rps "http://127.0.0.1:$((PORT+5))/")")
  tg_allow=$(max "$tg_allow" "$(rps "http://127.0.0.1:$((PORT+1))/")")
  tg_bare_headers=$(max "$tg_bare_headers" "$(rps "http://127.0.0.1:$((PORT+6))/")")
  gov_allow=$(max "$gov_allow" "$(rps "http://127.0.0.1:$((PORT+3))/")")
  tg_refuse=$(max "$tg_refuse" "$(rps "http://127.0.0.1:$((PORT+2))/")")
  gov_refuse=$(max "$gov_refuse" "$(rps "http://127.0.0.1:$((PORT+4))/")")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, best of $ROUNDS interleaved rounds, requests/s:"
echo "  bare                      $bare"
echo "  no-op layer               $noop   ($(ratio "$noop" "$bare")x bare)"
echo "  tollgate, allow path      $tg_allow   ($(ratio "$tg_allow" "$bare")x bare, $(ratio "$tg_allow" "$noop")x no-op layer)"
echo "  tollgate, allow, no rate-limit headers on allowed responses  $tg_bare_headers   ($(ratio "$tg_bare_headers" "$bare")x bare)"
echo "  tower_governor, allow     $gov_allow   ($(ratio "$gov_allow" "$bare")x bare, $(ratio "$gov_allow" "$noop")x no-op layer)"
echo "  tollgate, refusal path    $tg_refuse   ($(ratio "$tg_refuse" "$bare")x bare)"
echo "  tower_governor, refusal   $gov_refuse   ($(ratio "$gov_refuse" "$bare")x bare)"
echo "  tollgate / tower_governor: allow $(ratio "$tg_allow" "$gov_allow"), refusal $(ratio "$tg_refuse" "$gov_refuse")"
kill "$SERVER" 2>/dev/null || true

"$BIN" ws
