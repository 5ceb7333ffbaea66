#!/usr/bin/env bash
# The load benchmark of the actix-web adapter: the same minimal actix-web app bare, with
# tollgate-actix (headers on and off), with actix-governor (headers off, its default, and on), with a
# middleware that only writes three fixed X-RateLimit headers (the floor of any header-writing
# middleware) and with one that does nothing; on the allow path (a quota nothing exceeds) and the
# refusal path (every request over the limit); wrk on 127.0.0.1 only.
#
# With 2 or more CPUs to run on, the server runs on the first (one actix worker per server) and
# wrk on the second with one thread (PIN=1, the default there): the server is the bottleneck, so
# requests/s is the inverse of what one request costs it. PIN=0 runs both unpinned.
# Usage: examples/actix-demo/bench.sh   (env: DURATION=2s ROUNDS=9 CONNECTIONS=32 PORT=4300 PIN=1 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-2s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-4300}
ROUNDS=${ROUNDS:-9}
read -r CPU_A CPU_B < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(*(c + c)[:2])' 2>/dev/null || echo "")
if [ -z "${PIN:-}" ]; then
  if command -v taskset >/dev/null && [ -n "${CPU_B:-}" ] && [ "$CPU_A" != "$CPU_B" ]; then PIN=1; else PIN=0; fi
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p actix-demo --bin actix-bench-server
BIN=target/release/actix-bench-server
LOG=/tmp/tollgate-actix-bench-server.log
if [ "$PIN" = 1 ]; then
  taskset -c "$CPU_A" "$BIN" http "$PORT" > "$LOG" 2>&1 &
  WRK=(taskset -c "$CPU_B" wrk -t1)
  SETUP="server on CPU $CPU_A (one actix worker per server), wrk on CPU $CPU_B with 1 thread"
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
echo "refusal-path status codes: tollgate $(status http://127.0.0.1:$((PORT+2))/) actix-governor $(status http://127.0.0.1:$((PORT+6))/)"

# Each round runs every server once, in a shuffled order, with a run of the bare server before and
# after each one; a server's figure for the round is its requests/s over the mean of the two bare
# runs next to it (this shared VM's speed swings in spells of a few seconds). Reported: the median
# ratio over the rounds, with the lowest and highest, and the median requests/s.
names=(tg_allow tg_refuse tg_no_headers gov_allow gov_headers gov_refuse fixed_headers noop)
offsets=(1 2 3 4 5 6 7 8)
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
  printf "  %-55s %8.0f   %.3fx bare (%s)\n" "$1" "$(median "$OUT/$2.rps")" "$(median "$OUT/$2.ratio")" "$(range "$OUT/$2.ratio")"
}
ratio() { awk -v a="$(median "$OUT/$1.ratio")" -v b="$(median "$OUT/$2.ratio")" 'BEGIN { printf "%.3f", a / b }'; }
echo "wrk -c$CONNECTIONS -d$DURATION, $SETUP, $ROUNDS rounds; median requests/s, median ratio to bare (lowest-highest):"
printf "  %-55s %8.0f\n" "bare actix-web" "$(median "$OUT/bare.rps")"
row "no-op middleware (wrap_fn)" noop
row "three fixed X-RateLimit headers, no limiter (the floor)" fixed_headers
row "tollgate-actix, allow path (X-RateLimit headers)" tg_allow
row "tollgate-actix, allow, no headers on allowed responses" tg_no_headers
row "actix-governor, allow (no headers, its default)" gov_allow
row "actix-governor, allow, use_headers()" gov_headers
row "tollgate-actix, refusal path" tg_refuse
row "actix-governor, refusal path" gov_refuse
echo "  tollgate / actix-governor: allow, headers on both $(ratio tg_allow gov_headers); headers off on both" \
  "$(ratio tg_no_headers gov_allow); refusal $(ratio tg_refuse gov_refuse)"
echo "  tollgate refusal path / bare allow path: $(median "$OUT/tg_refuse.ratio")"
rm -r "$OUT"
