#!/usr/bin/env bash
# The load benchmark: the same minimal axum app bare, with tollgate and with tower_governor, on the
# allow path (a quota nothing exceeds) and the refusal path (every request over the limit), with wrk
# on 127.0.0.1 only; then WebSocket messages per second through a bare and a wrapped socket.
#
# With 2 or more CPUs to run on, the server runs on the first with one tokio worker and wrk on the
# second with one thread (PIN=1, the default there): the server is the bottleneck, so requests/s is the
# inverse of what one request costs it, and the two programs do not fight over cores. PIN=0 runs
# both unpinned (THREADS wrk threads, a worker per CPU), as before.
# Usage: examples/axum-demo/bench.sh   (env: DURATION=2s ROUNDS=9 CONNECTIONS=32 PORT=4100 PIN=1 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-2s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-4100}
ROUNDS=${ROUNDS:-9}
# The first two CPUs this process may run on (a container may be given, say, CPUs 2-3).
read -r CPU_A CPU_B < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(*(c + c)[:2])' 2>/dev/null || echo "")
if [ -z "${PIN:-}" ]; then
  if command -v taskset >/dev/null && [ -n "${CPU_B:-}" ] && [ "$CPU_A" != "$CPU_B" ]; then PIN=1; else PIN=0; fi
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p axum-demo --bin bench-server
BIN=target/release/bench-server
if [ "$PIN" = 1 ]; then
  TOKIO_WORKER_THREADS=1 taskset -c "$CPU_A" "$BIN" http "$PORT" > /tmp/tollgate-bench-server.log 2>&1 &
  WRK=(taskset -c "$CPU_B" wrk -t1)
  SETUP="server on CPU $CPU_A with 1 tokio worker, wrk on CPU $CPU_B with 1 thread"
else
  "$BIN" http "$PORT" > /tmp/tollgate-bench-server.log 2>&1 &
  WRK=(wrk -t"$THREADS")
  SETUP="unpinned, wrk with $THREADS threads"
fi
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q ready /tmp/tollgate-bench-server.log 2>/dev/null && break; sleep 0.1; done
grep -q ready /tmp/tollgate-bench-server.log || {
  echo "the bench server did not start:" >&2
  cat /tmp/tollgate-bench-server.log >&2
  exit 1
}

rps() { # url -> requests per second
  "${WRK[@]}" -c"$CONNECTIONS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'
}
status() { curl -s -o /dev/null "$1"; curl -s -o /dev/null -w '%{http_code}' "$1"; }

echo "refusal-path status codes: tollgate $(status http://127.0.0.1:$((PORT+2))/) governor $(status http://127.0.0.1:$((PORT+4))/)" \
  "(around the router: $(status http://127.0.0.1:$((PORT+12))/) $(status http://127.0.0.1:$((PORT+13))/))"
# Each round runs every server once, in a shuffled order, with a run of the bare server before
# and after each one (the bare runs between two servers serve both), and each server's figure for
# the round is its requests/s over the mean of the two bare runs next to it: a ratio taken within
# three seconds. This shared machine's speed swings by a third from one run to the next in spells
# of a few seconds, which the guest does not see as steal time; ratios over a wider window carry
# those swings. Reported: the median ratio over the rounds, with the lowest and highest, and the
# median requests/s.
names=(noop tg_allow tg_no_headers gov_allow gov_headers tg_refuse gov_refuse
  around_tg_allow around_tg_no_headers around_gov_allow around_gov_headers around_tg_refuse around_gov_refuse
  around_fixed_headers inside_fixed_headers)
offsets=(5 1 6 3 7 2 4 8 9 10 11 12 13 14 15)
OUT=$(mktemp -d)
for _ in $(seq 1 "$ROUNDS"); do
  previous=$(rps "http://127.0.0.1:$PORT/")
  for i in $(seq 0 $((${#names[@]} - 1)) | shuf); do
    n=${names[$i]}
    got=$(rps "http://127.0.0.1:$((PORT + offsets[$i]))/")
    next=$(rps "http://127.0.0.1:$PORT/")
    bare=$(awk -v a="$previous" -v b="$next" 'BEGIN { print (a + b) / 2 }')
    echo "$bare" >> "$OUT/bare.rps"
    echo "$got" >> "$OUT/$n.rps"
    awk -v a="$got" -v b="$bare" 'BEGIN { printf "%.4f\n", a / b }' >> "$OUT/$n.ratio"
    previous=$next
  done
done

median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.3f-%.3f", lo, hi }'; }
row() { # label name
  printf "  %-50s %8.0f   %.3fx bare (%s)\n" "$1" "$(median "$OUT/$2.rps")" "$(median "$OUT/$2.ratio")" "$(range "$OUT/$2.ratio")"
}
ratio() { awk -v a="$(median "$OUT/$1.ratio")" -v b="$(median "$OUT/$2.ratio")" 'BEGIN { printf "%.3f", a / b }'; }
echo "wrk -c$CONNECTIONS -d$DURATION, $SETUP, $ROUNDS rounds; median requests/s, median ratio to bare (lowest-highest):"
printf "  %-50s %8.0f\n" "bare" "$(median "$OUT/bare.rps")"
echo " inside the router (Router::layer):"
row "no-op tower layer" noop
row "tollgate, allow path" tg_allow
row "tollgate, allow, no headers on allowed responses" tg_no_headers
row "tower_governor, allow (no headers, its default)" gov_allow
row "tower_governor, allow, use_headers()" gov_headers
row "tollgate, refusal path" tg_refuse
row "tower_governor, refusal path" gov_refuse
row "three fixed X-RateLimit headers, no limiter" inside_fixed_headers
echo "  tollgate / tower_governor: allow $(ratio tg_allow gov_allow), allow with headers on both" \
  "$(ratio tg_allow gov_headers), allow with headers off on both $(ratio tg_no_headers gov_allow)," \
  "refusal $(ratio tg_refuse gov_refuse)"
echo " around the router (layer.layer(router), before routing):"
row "tollgate, allow path" around_tg_allow
row "tollgate, allow, no headers on allowed responses" around_tg_no_headers
row "tower_governor, allow (no headers, its default)" around_gov_allow
row "tower_governor, allow, use_headers()" around_gov_headers
row "tollgate, refusal path" around_tg_refuse
row "tower_governor, refusal path" around_gov_refuse
row "three fixed X-RateLimit headers, no limiter" around_fixed_headers
echo "  tollgate / tower_governor: allow $(ratio around_tg_allow around_gov_allow), allow with headers on both" \
  "$(ratio around_tg_allow around_gov_headers), allow with headers off on both" \
  "$(ratio around_tg_no_headers around_gov_allow), refusal $(ratio around_tg_refuse around_gov_refuse)"
rm -r "$OUT"
kill "$SERVER" 2>/dev/null || true

"$BIN" ws
