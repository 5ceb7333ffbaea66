#!/usr/bin/env bash
# The ceiling for one round trip per decision: redis-benchmark running tollgate's own check script
# (src/lua/check.lua) by EVALSHA, with the arguments the store sends for one GCRA check
# (1000000/s, cost 1, keys spread over 100000 clients), at 50 connections; without pipelining
# (-P 1) and with pipelining (-P 16). Compare with `cargo bench -p tollgate-redis --bench redis_store`.
#
# Usage: redis_ceiling.sh [port]   (without a port it starts its own redis-server)
# Environment: REQUESTS (default 200000), CLIENTS (default 50), PIPELINE (default 16).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
script="$here/../src/lua/check.lua"
requests="${REQUESTS:-200000}"
clients="${CLIENTS:-50}"
pipeline="${PIPELINE:-16}"

command -v redis-benchmark >/dev/null || { echo "redis-benchmark not found (apt-get install redis-tools)" >&2; exit 1; }

if [[ $# -ge 1 ]]; then
  port="$1"
else
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  dir="$(mktemp -d)"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
  server=$!
  trap 'kill "$server" 2>/dev/null; rm -rf "$dir"' EXIT
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
fi

sha="$(redis-cli -p "$port" -x SCRIPT LOAD < "$script")"
# The arguments of one check: mode, now ('' = server TIME), TTL floor, count, then the check:
# algorithm, period ns, emission interval ns, amount, burst, cost, max wait ns.
args=(EVALSHA "$sha" 2 "bench:{__rand_int__}:s" "bench:{__rand_int__}:b" c "" 0 1 g 1000000000 1000 1000000 1000000 1 0)

for p in 1 "$pipeline"; do
  rps="$(redis-benchmark -p "$port" -c "$clients" -n "$requests" -r 100000 -P "$p" -q "${args[@]}" \
    | tr '\r' '\n' | grep -o '[0-9.]* requests per second.*' | tail -n 1)"
  echo "redis-benchmark EVALSHA check.lua, $clients clients, -P $p: $rps"
done
