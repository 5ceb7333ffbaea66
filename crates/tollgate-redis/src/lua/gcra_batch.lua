-- tollgate: several GCRA checks that may not wait (max wait 0), on distinct state keys, in mode
-- c (check and commit), decided as check.lua decides them, with nothing else made per call.
--
-- For such a batch check.lua's `go_time` settles at once at now (no check may go later), its
-- peeks at now equal its commits at now (no two checks share a state), so the batch is each
-- check decided alone at now (check.lua's `apply`: block key first, then `gcra.apply`), all
-- committed (`gcra.save`) when every one passed and none otherwise: all-or-nothing, as there.
-- The Rust side (script.rs, `Call::script`) sends only such batches here. The arithmetic is
-- gcra.lua's (see there for why it is written out and what each step costs).
--
-- ARGV: with a test clock only, first now (nanoseconds as a decimal string) and the least TTL
-- to set in milliseconds; then per check 3 arguments: emission interval (ns), burst, cost.
-- KEYS: per check, its state key then its block key (all read in one MGET).
--
-- Reply: as check.lua's: { all passed (1/0), now as a decimal string,
--          then per check: allowed, blocked, limit, remaining, reset_after, retry_after, wait }

local E9 = 1000000000
local floor = math.floor
local sub = string.sub
local format = string.format

local count = #KEYS / 2
local first, floor_ms, arg_now = 0, 0, ''
if #ARGV ~= 3 * count then
  first, floor_ms, arg_now = 2, tonumber(ARGV[2]), ARGV[1]
end
local B, now, now_s
if arg_now == '' then
  local t = redis.call('TIME')
  local us = t[2]
  B = tonumber(t[1])
  now = tonumber(us) * 1000
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

local values = redis.call('MGET', unpack(KEYS))
-- Sized for two checks in one constructor (growing a table costs more than filling it).
local reply = { 1, now_s, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
for i = 1, count do
  local a = first + 3 * i - 3
  local o = 7 * i - 5
  local t = tonumber(ARGV[a + 1])
  local burst = tonumber(ARGV[a + 2])
  local block = values[2 * i]
  local u
  if block then
    local n = #block
    if n <= 9 then
      u = -B * E9 + tonumber(block)
    else
      u = (tonumber(sub(block, 1, n - 9)) - B) * E9 + tonumber(sub(block, n - 8))
    end
  end
  if u and u > now then
    reply[1] = 0
    reply[o + 1], reply[o + 2], reply[o + 3], reply[o + 4] = 0, 1, burst, 0
    reply[o + 5], reply[o + 6], reply[o + 7] = u - now, u - now, 0
  else
    local state = values[2 * i - 1]
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
    local c = ARGV[a + 3]
    local new_tat
    if c == '1' then
      new_tat = base + t
    else
      new_tat = base + t * tonumber(c)
    end
    -- Max wait 0: allowed when it may go now (`new_tat - cap <= now`).
    local allowed = new_tat - cap <= now
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
    if allowed then
      -- Kept where the state was read (a new table costs more).
      values[2 * i - 1] = new_tat
      reply[o + 1], reply[o + 2], reply[o + 3], reply[o + 4] = 1, 0, burst, q
      reply[o + 5], reply[o + 6], reply[o + 7] = new_tat - now, 0, 0
    else
      reply[1] = 0
      reply[o + 1], reply[o + 2], reply[o + 3], reply[o + 4] = 0, 0, burst, q
      reply[o + 5], reply[o + 6], reply[o + 7] = base - now, new_tat - cap - now, 0
    end
  end
end
if reply[1] == 0 then
  return reply
end

for i = 1, count do
  local key = KEYS[2 * i - 1]
  local new_tat = values[2 * i - 1]
  if new_tat <= now then
    redis.call('DEL', key)
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
    redis.call('SET', key, v, 'PX', format('%d', ms))
  end
end
return reply
