-- The reference for what one rate-limit decision costs Redis: a plain GCRA script, the shape of
-- most Redis rate limiters' (rwz/redis-gcra's perform_gcra_ratelimit.lua, and its ports):
-- floating-point seconds from TIME, one GET, one SET with a whole-second EX. No penalty block,
-- no exact nanoseconds, no delays, no snapshot beyond allowed / remaining / retry / reset.
-- Not used by tollgate; redis_ceiling.sh runs it beside tollgate's scripts on the same server.
--
-- KEYS[1]: the key; ARGV: burst, rate (per period), period (seconds), cost.
local key = KEYS[1]
local burst, rate, period, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local emission = period / rate
local t = redis.call('TIME')
local now = (t[1] - 1700000000) + t[2] / 1000000
local tat = tonumber(redis.call('GET', key)) or now
tat = math.max(tat, now)
local new_tat = tat + emission * cost
local diff = now - (new_tat - emission * burst)
if diff < 0 then
  return { 0, 0, tostring(-diff), tostring(tat - now) }
end
local reset = new_tat - now
redis.call('SET', key, new_tat, 'EX', math.ceil(reset))
return { 1, math.floor(diff / emission), '-1', tostring(reset) }
