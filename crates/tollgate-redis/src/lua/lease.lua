-- tollgate: distributed concurrency leases.
--
-- KEYS[1]: the key's lease set, KEYS[2]: the limiter's lease set (both sorted sets of lease ids
-- scored by their expiry in server milliseconds; one hash tag per limiter, so one slot), KEYS[3]:
-- the limiter's ids released lately (scored likewise), so that a heartbeat that reaches Redis
-- after its lease's release does not add it back.
-- ARGV[1]: a = acquire, h = heartbeat, r = release; ARGV[2]: the lease id; ARGV[3]: the lease's
-- time to live in ms; ARGV[4] / ARGV[5]: the per-key / global caps, -1 for none.
--
-- A lease lives until released or until its holder stops heartbeating for a time to live: expired
-- leases are dropped before counting, so a crashed instance's places come back on their own.
--
-- Reply: acquire {1} or {0, 'k' | 'g', cap}; heartbeat {1}, or {2} when the lease was lost (a
-- restart or failover forgot it, or heartbeats failed for a whole TTL) and is added back: its
-- holder still holds the place (the heartbeat passes the caps it was acquired with, -1 for the
-- per-key set it is not in), or {0} when it was released; release {1}.

local op = ARGV[1]
local id = ARGV[2]
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + ttl

-- Keeps a set alive at least as long as its newest lease (holders may use different TTLs).
local function keep(key)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ARGV[3])
  end
end

if op == 'r' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], expires, id)
  keep(KEYS[3])
  return { 1 }
end

local per_key = tonumber(ARGV[4])
local global = tonumber(ARGV[5])

-- Expired leases go before counting. Each command costs Redis several microseconds, so a set
-- this call neither reads nor counts is left to the calls that do: the per-key set without a
-- per-key cap, and the lately released ids (read by heartbeats only; releases prune it too).
if per_key >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

if op == 'h' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local lost = not redis.call('ZSCORE', KEYS[2], id)
  if lost and redis.call('ZSCORE', KEYS[3], id) then
    return { 0 }
  end
  if per_key >= 0 then
    redis.call('ZADD', KEYS[1], expires, id)
    keep(KEYS[1])
  end
  redis.call('ZADD', KEYS[2], expires, id)
  keep(KEYS[2])
  if lost then
    return { 2 }
  end
  return { 1 }
end

if global >= 0 and redis.call('ZCARD', KEYS[2]) >= global then
  return { 0, 'g', global }
end
if per_key >= 0 then
  if redis.call('ZCARD', KEYS[1]) >= per_key then
    return { 0, 'k', per_key }
  end
  redis.call('ZADD', KEYS[1], expires, id)
  keep(KEYS[1])
end
redis.call('ZADD', KEYS[2], expires, id)
keep(KEYS[2])
return { 1 }
