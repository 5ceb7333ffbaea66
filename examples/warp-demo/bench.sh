#!/usr/bin/env bash
# The load benchmark for warp: the same minimal warp app (GET / -> "hello") bare, with tollgate-warp
# (allow path with and without X-RateLimit headers, refusal path), with a filter that only writes
# three fixed X-RateLimit headers (the floor for any limiter that writes them), and bare through
# tollgate_warp::serve without limits (the server loop alone); wrk on 127.0.0.1 only.
#
# With 2 or more CPUs to run on, the server runs on the first with one tokio worker and wrk on the
# second with one thread (PIN=1, the default there): the server is the bottleneck, so requests/s is
# the inverse of what one request costs it. PIN=0 runs both unpinned.
# Usage: examples/warp-demo/bench.sh   (env: DURATION=1s ROUNDS=9 CONNECTIONS=32 PORT=4200 PIN=1 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-1s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-4200}
ROUNDS=${ROUNDS:-9}
read -r CPU_A CPU_B < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(*(c + c)[:2])' 2>/dev/null || echo "")
if [ -z "${PIN:-}" ]; then
  if command -v taskset >/dev/null && [ -n "${CPU_B:-}" ] && [ "$CPU_A" != "$CPU_B" ]; then PIN=1; else PIN=0; fi
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p warp-demo --bin bench-server
BIN=target/release/bench-server
LOG=/tmp/tollgate-warp-bench-server.log
if [ "$PIN" = 1 ]; then
  TOKIO_WORKER_THREADS=1 taskset -c "$CPU_A" "$BIN" http "$PORT" > "$LOG" 2>&1 &
  WRK=(taskset -c "$CPU_B" wrk -t1)
  SETUP="server on CPU $CPU_A with 1 tokio worker, wrk on CPU $CPU_B with 1 thread"
else
  "$BIN" http "$PORT" > "$LOG" 2>&1 &
  WRK=(wrk -t"$THREADS")
  SETUP="unpinned, wrk with $THREADS threads"
fi
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q ready "$LOG" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$LOG" || { echo "the bench server did not start:" >&2; cat "$LOG" >&2; exit 1; }

rps() { # url -> requests per second
  "${WRK[@]}" -c"$CONNECTIONS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {print $2}'
}
status() { curl -s -o /dev/null "$1"; curl -s -o /dev/null -w '%{http_code}' "$1"; }
echo "status codes: allow $(status http://127.0.0.1:$((PORT+1))/), refusal path $(status http://127.0.0.1:$((PORT+2))/)"

# Each round runs every server once, in a shuffled order, with a run of the bare server before and
# after each one; a server's figure for the round is its requests/s over the mean of the two bare
# runs next to it (this shared VM's speed swings in spells of a few seconds). Reported: the median
# ratio over the rounds, with the lowest and highest, and the median requests/s.
names=(tg_allow tg_refuse tg_no_headers fixed_headers own_serve)
offsets=(1 2 3 4 5)
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
  printf "  %-58s %8.0f   %.3fx bare (%s)\n" "$1" "$(median "$OUT/$2.rps")" "$(median "$OUT/$2.ratio")" "$(range "$OUT/$2.ratio")"
}
ratio() { awk -v a="$(median "$OUT/$1.ratio")" -v b="$(median "$OUT/$2.ratio")" 'BEGIN { printf "%.3f", a / b }'; }
echo "wrk -c$CONNECTIONS -d$DURATION, $SETUP, $ROUNDS rounds; median requests/s, median ratio to bare (lowest-highest):"
printf "  %-58s %8.0f\n" "bare warp (warp::serve)" "$(median "$OUT/bare.rps")"
row "tollgate-warp, allow, X-RateLimit headers" tg_allow
row "tollgate-warp, allow, no headers on allowed responses" tg_no_headers
row "tollgate-warp, refusal path (429, headers, JSON body)" tg_refuse
row "floor: a filter writing three fixed X-RateLimit headers" fixed_headers
row "no limits, through tollgate_warp::serve + warp::service" own_serve
echo "  tollgate-warp with headers / floor: $(ratio tg_allow fixed_headers)"
rm -r "$OUT"
