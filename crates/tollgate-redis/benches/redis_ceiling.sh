#!/usr/bin/env bash
# What each of tollgate's Lua scripts costs Redis, beside a plain GCRA script (gcra_reference.lua),
# on the same redis-server in the same run: redis-benchmark runs each script by EVALSHA with the
# arguments the store sends (quota 1000000/s, cost 1, keys spread over 100000 clients, CLIENTS
# connections, each PIPELINE deep), the cases interleaved, ROUNDS times. Per case it prints the
# median of: requests per second, INFO commandstats usec_per_call of EVALSHA (time inside the
# script, as Redis measures it), and, when the server runs on this machine, the CPU time of its
# main thread per request (from /proc: parsing, the script and the reply; unlike usec_per_call it
# does not count time the thread was descheduled, so it is the steadier figure on a busy machine).
# With CALLGRIND=1 it starts its own redis-server under valgrind and prints instructions per
# request instead (deterministic: the figure to compare scripts by; slow).
#
# Cases (CASES to choose; default all):
#   reference       gcra_reference.lua (plain GCRA, 1 key)
#   check-gcra      check.lua, one GCRA check (the general script)
#   gcra            gcra.lua, one GCRA check (what the store sends)
#   check-gcra-2    check.lua, two GCRA checks
#   gcra-batch-2    gcra_batch.lua, two GCRA checks (what the store sends)
#   check-window    check.lua, one sliding-window check (the general script)
#   window          window.lua, one sliding-window check (what the store sends)
#   lease           lease.lua, acquire (per-key cap 10, 1 s TTL; leases expire, never released)
#   before-gcra, before-gcra-2, before-window
#                   with BEFORE=<an older check.lua>: that script's one GCRA check, two, and one
#                   sliding-window check (e.g. BEFORE=<(git show REV:crates/tollgate-redis/src/lua/check.lua)),
#                   measured in the same rounds as the rest
#
# Usage: redis_ceiling.sh [port]   (without a port it starts its own redis-server)
# Environment: REQUESTS (default 100000), CLIENTS (50), PIPELINE (16), ROUNDS (3), CASES; TAG
# puts every key under that Redis Cluster hash tag (for a run against one master of a cluster,
# with a tag it serves: redis-benchmark does not follow a script's keys across slots).
# Output: one line per case: "<case> <requests/s> <usec_per_call> <cpu us/request>" (or
# "<case> <instructions/request>" with CALLGRIND=1), after a line naming the server and CPU.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lua="$here/../src/lua"
requests="${REQUESTS:-100000}"
clients="${CLIENTS:-50}"
pipeline="${PIPELINE:-16}"
rounds="${ROUNDS:-3}"
before_lua="${BEFORE:-}"
default_cases="reference check-gcra gcra check-gcra-2 gcra-batch-2 check-window window lease"
[[ -n "$before_lua" ]] && default_cases="$default_cases before-gcra before-gcra-2 before-window"
cases=(${CASES:-$default_cases})
callgrind="${CALLGRIND:-0}"

for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install redis-server redis-tools)" >&2; exit 1; }
done
if [[ "$callgrind" == 1 ]]; then
  command -v callgrind_control >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
  [[ $# -eq 0 ]] || { echo "CALLGRIND=1 starts its own server: give no port" >&2; exit 1; }
  requests="${REQUESTS:-20000}"
  clients="${CLIENTS:-10}"
  rounds=1
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cli() { redis-cli -p "$port" "$@"; }

if [[ $# -ge 1 ]]; then
  port="$1"
else
  port="$(free_port)"
  dir="$(mktemp -d)"
  wrap=()
  [[ "$callgrind" == 1 ]] && wrap=(valgrind --tool=callgrind "--callgrind-out-file=$dir/callgrind.%p")
  "${wrap[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    >"$dir/log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
  for _ in $(seq 600); do cli ping >/dev/null 2>&1 && break; sleep 0.05; done
fi

pid="$(cli INFO server | tr -d '\r' | sed -n 's/^process_id://p')"
# The main thread's on-CPU nanoseconds, when the server runs here.
cpu_ns() { if [[ -r "/proc/$pid/task/$pid/schedstat" ]]; then cut -d' ' -f1 "/proc/$pid/task/$pid/schedstat"; else echo 0; fi; }
echo "# $(redis-server --version | cut -d' ' -f1-3) on $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs; $requests requests, $clients clients, -P $pipeline"

load() { cli -x SCRIPT LOAD <"$1"; }
ref="$(load "$here/gcra_reference.lua")"
check="$(load "$lua/check.lua")"
gcra="$(load "$lua/gcra.lua")"
batch="$(load "$lua/gcra_batch.lua")"
window="$(load "$lua/window.lua")"
before="none"
[[ -n "$before_lua" ]] && before="$(load "$before_lua")"
lease="$(load "$lua/lease.lua")"

# The keys of one check: its state and block keys, in a namespace per case (the scripts keep
# different states; each __rand_int__ is drawn on its own, and both keys miss or hit alike in
# cost).
tag="${TAG:-}"
keys() {
  local n="$1" c="$2"
  if [[ -n "$tag" ]]; then
    echo "bench:{$tag}:$c:__rand_int__:s$n" "bench:{$tag}:$c:__rand_int__:b$n"
  else
    echo "bench:{__rand_int__}:$c:s$n" "bench:{__rand_int__}:$c:b$n"
  fi
}
if [[ -n "$tag" ]]; then
  lk=("lease:{$tag}:k:__rand_int__" "lease:{$tag}:g" "lease:{$tag}:r")
else
  lk=("lease:{bench}:k:__rand_int__" "lease:{bench}:g" "lease:{bench}:r")
fi
# check.lua's arguments: mode, now ('' = TIME), TTL floor, count, then per check: algorithm,
# period ns, emission interval ns, amount, burst, cost, max wait ns. gcra.lua's: per check
# emission interval, burst, cost, max wait; gcra_batch.lua's: emission interval, burst, cost;
# window.lua's: period, amount, cost, max wait.
g=(1000000000 1000 1000000 1000000 1 0)
args() {
  local k0 k1 k2
  k0="$(keys "" "$1" | cut -d' ' -f1)"
  read -ra k1 <<<"$(keys 1 "$1")"
  read -ra k2 <<<"$(keys 2 "$1")"
  case "$1" in
    reference) echo EVALSHA "$ref" 1 "$k0" 1000000 1000000 1 1 ;;
    check-gcra) echo EVALSHA "$check" 2 "${k1[@]}" c "''" 0 1 g "${g[@]}" ;;
    gcra) echo EVALSHA "$gcra" 2 "${k1[@]}" 1000 1000000 1 0 ;;
    check-gcra-2) echo EVALSHA "$check" 4 "${k1[@]}" "${k2[@]}" c "''" 0 2 g "${g[@]}" g "${g[@]}" ;;
    gcra-batch-2) echo EVALSHA "$batch" 4 "${k1[@]}" "${k2[@]}" 1000 1000000 1 1000 1000000 1 ;;
    check-window) echo EVALSHA "$check" 2 "${k1[@]}" c "''" 0 1 w "${g[@]}" ;;
    window) echo EVALSHA "$window" 2 "${k1[@]}" 1000000000 1000000 1 0 ;;
    lease) echo EVALSHA "$lease" 3 "${lk[@]}" a __rand_int__ 1000 10 -1 ;;
    before-gcra) echo EVALSHA "$before" 2 "${k1[@]}" c "''" 0 1 g "${g[@]}" ;;
    before-gcra-2) echo EVALSHA "$before" 4 "${k1[@]}" "${k2[@]}" c "''" 0 2 g "${g[@]}" g "${g[@]}" ;;
    before-window) echo EVALSHA "$before" 2 "${k1[@]}" c "''" 0 1 w "${g[@]}" ;;
    *) echo "unknown case $1" >&2; exit 1 ;;
  esac
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One run of a case: prints "requests/s usec_per_call cpu_us_per_request".
run() {
  local cmd
  eval "cmd=($(args "$1"))"
  cli CONFIG RESETSTAT >/dev/null
  local before after rps usec
  before="$(cpu_ns)"
  rps="$(redis-benchmark -p "$port" -c "$clients" -n "$requests" -r 100000 -P "$pipeline" -q "${cmd[@]}" |
    tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -n 1 | cut -d' ' -f1)"
  after="$(cpu_ns)"
  local stats failed
  stats="$(cli INFO commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')"
  usec="$(sed -n 's/.*usec_per_call=\([0-9.]*\).*/\1/p' <<<"$stats")"
  # A script error is a cheap reply, not a decision: say so rather than count it as one.
  failed="$(sed -n 's/.*failed_calls=\([0-9]*\).*/\1/p' <<<"$stats")"
  [[ "${failed:-0}" == 0 ]] || echo "warning: $1: $failed of $requests calls failed" >&2
  echo "$rps ${usec:-0} $(awk -v a="$before" -v b="$after" -v n="$requests" 'BEGIN { printf "%.2f", (b - a) / n / 1000 }')"
}

# Under callgrind: instructions of the whole server per request, from zeroed counters to a dump.
run_callgrind() {
  local cmd
  eval "cmd=($(args "$1"))"
  callgrind_control -z "$server" >/dev/null 2>&1
  redis-benchmark -p "$port" -c "$clients" -n "$requests" -r 100000 -P "$pipeline" -q "${cmd[@]}" >/dev/null
  rm -f "$dir"/callgrind.*.[0-9]*
  callgrind_control -d "$server" >/dev/null 2>&1
  local out
  out="$(ls -t "$dir"/callgrind.*.[0-9]* | head -n 1)"
  awk -v n="$requests" '/^(summary|totals):/ { printf "%d\n", $2 / n; exit }' "$out"
}

if [[ "$callgrind" == 1 ]]; then
  # valgrind runs the server as a child of its own launcher: signal the server's pid.
  server="$pid"
  for c in "${cases[@]}"; do echo "$c $(run_callgrind "$c")"; done
  exit 0
fi

results="$(mktemp)"
for _ in $(seq "$rounds"); do
  for c in "${cases[@]}"; do echo "$c $(run "$c")" >>"$results"; done
done
for c in "${cases[@]}"; do
  rps="$(awk -v c="$c" '$1 == c { print $2 }' "$results" | median)"
  usec="$(awk -v c="$c" '$1 == c { print $3 }' "$results" | median)"
  cpu="$(awk -v c="$c" '$1 == c { print $4 }' "$results" | median)"
  echo "$c $rps $usec $cpu"
done
rm -f "$results"
