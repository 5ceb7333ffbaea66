-- tollgate: the hot path, one GCRA check in mode c (check and commit), decided as check.lua
-- decides it, with nothing else made per call.
--
-- Redis runs a script's whole body on every call, so check.lua pays for its generality each
-- time (closures and tables for four algorithms, the search for the time several delayed limits
-- go, a GET of the block key on each pass): twice the Redis CPU of a plain GCRA script. The
-- Rust side (script.rs, `Call::script`) sends a batch of one GCRA check here, where none of
-- that changes the outcome: check.lua then decides it once, at now. Several GCRA checks that
-- may not wait go to gcra_batch.lua; everything else to check.lua.
--
-- The arithmetic is check.lua's `apply` for one check (block key first, then `gcra.apply` with
-- at = now, then `gcra.save`), with `rel`, `divmod` and `abs` written out: same doubles, same
-- order, hence the same results even where they round. Every step was measured (redis-server's
-- instructions per call under callgrind, benches/redis_ceiling.sh): a command run by the script
-- (TIME, MGET, SET) costs 5,000-15,000 instructions, a tonumber of a decimal string or a
-- string.format near 1,000, a closure with its upvalues a few hundred, a table reply some
-- 6,000; so it makes no function, reads both keys in one MGET, converts each argument once,
-- and returns a single table constructor.
--
-- ARGV: with a test clock only, first now (nanoseconds as a decimal string) and the least TTL
-- to set in milliseconds (in production: the server's TIME and no least TTL, and the two
-- arguments are left out, since each argument costs Redis to parse); then the check's emission
-- interval (ns), burst, cost and max wait (ns).
-- KEYS: the check's state key, then its block key.
--
-- Reply: as check.lua's: { allowed (1/0), now as a decimal string,
--          allowed, blocked, limit, remaining, reset_after, retry_after, wait }

local E9 = 1000000000
local floor = math.floor
local sub = string.sub
local format = string.format

local first, floor_ms, arg_now = 0, 0, ''
if #ARGV == 6 then
  first, floor_ms, arg_now = 2, tonumber(ARGV[2]), ARGV[1]
end
local B, now, now_s
if arg_now == '' then
  local t = redis.call('TIME')
  local us = t[2]
  B = tonumber(t[1])
  now = tonumber(us) * 1000
  -- check.lua's `abs(now)`: the microseconds zero-padded to six digits, then 000 (cheaper
  -- than a string.format).
  now_s = t[1] .. sub('00000', #us) .. us .. '000'
else
  local n = #arg_now
  if n <= 9 then
    B, now = 0, tonumber(arg_now)
    now_s = format('%d', now)
  else
    B, now = tonumber(sub(arg_now, 1, n - 9)), tonumber(sub(arg_now, n - 8))
    now_s = format('%d%09d', B, now)
  end
end

local t = tonumber(ARGV[first + 1])
local burst = tonumber(ARGV[first + 2])
local values = redis.call('MGET', KEYS[1], KEYS[2])

-- A penalty block refuses it, whatever the bucket holds.
local block = values[2]
if block then
  local n = #block
  local u
  if n <= 9 then
    u = -B * E9 + tonumber(block)
  else
    u = (tonumber(sub(block, 1, n - 9)) - B) * E9 + tonumber(sub(block, n - 8))
  end
  if u > now then
    return { 0, now_s, 0, 1, burst, 0, u - now, u - now, 0 }
  end
end

-- gcra.apply: state is the theoretical arrival time (tat), a decimal string.
local state = values[1]
local base = now
if state then
  local n = #state
  local tat
  if n <= 9 then
    tat = -B * E9 + tonumber(state)
  else
    tat = (tonumber(sub(state, 1, n - 9)) - B) * E9 + tonumber(sub(state, n - 8))
  end
  if tat > now then
    base = tat
  end
end
local cap = t * burst
-- A cost of 1 (the usual one) spares a tonumber: t * 1 is t.
local c = ARGV[first + 3]
local new_tat
if c == '1' then
  new_tat = base + t
else
  new_tat = base + t * tonumber(c)
end
local allow_at = new_tat - cap
if allow_at < now then
  allow_at = now
end
-- No wait allowed (the usual case) needs none: `allow_at >= now`; spares a tonumber.
local w = ARGV[first + 4]
local allowed
if w == '0' then
  allowed = allow_at == now
else
  allowed = allow_at - now <= tonumber(w)
end
-- remaining = floor(max(now + cap - held, 0) / t), exact below 2^53 (check.lua's `divmod`).
local held = base
if allowed then
  held = new_tat
end
local left = now + cap - held
if left < 0 then
  left = 0
end
local q = floor(left / t)
local r = left - q * t
if r < 0 then
  q = q - 1
elseif r >= t then
  q = q + 1
end
if not allowed then
  return { 0, now_s, 0, 0, burst, q, base - now, allow_at - now, 0 }
end

-- gcra.save: idle at once (a cost of 0 on a full bucket) is no state at all.
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  local sec = floor(new_tat / E9)
  local ns = new_tat - sec * E9
  if ns < 0 then
    sec = sec - 1
    ns = ns + E9
  elseif ns >= E9 then
    sec = sec + 1
    ns = ns - E9
  end
  -- `new_tat > now >= 0`: the second is B or later, never negative.
  sec = B + sec
  local v
  if sec == 0 then
    v = format('%d', ns)
  else
    v = format('%d%09d', sec, ns)
  end
  local ms = math.ceil((new_tat - now) / 1000000)
  if ms < floor_ms then
    ms = floor_ms
  end
  redis.call('SET', KEYS[1], v, 'PX', format('%d', ms))
end
return { 1, now_s, 1, 0, burst, q, new_tat - now, 0, allow_at - now }
