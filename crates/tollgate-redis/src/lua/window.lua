-- tollgate: one sliding-window check in mode c (check and commit), decided as check.lua decides
-- it, with nothing else made per call.
--
-- The Rust side (script.rs, `Call::script`) sends a batch of one sliding-window check here:
-- check.lua then decides it once, at now (its `apply`: block key first, then `window.apply`
-- with not_before = now, then `window.save` when the state changed, rolled or committed), and
-- pays for the rest of its generality on every call (see gcra.lua). The arithmetic is check.lua's
-- line for line (`divmod`, `muldiv`, `origin_mod`, `window_start`, `weighted`,
-- `elapsed_for_room`, `window_roll`, `rel`, `abs`): same doubles, same order, same results; the
-- state lives in locals instead of a table, and the window start is computed once.
--
-- ARGV: with a test clock only, first now (nanoseconds as a decimal string) and the least TTL
-- to set in milliseconds; then the check's period (ns), amount, cost and max wait (ns).
-- KEYS: the check's state key, then its block key.
--
-- Reply: as check.lua's: { allowed (1/0), now as a decimal string,
--          allowed, blocked, limit, remaining, reset_after, retry_after, wait }

local E9 = 1000000000
local floor = math.floor
local max = math.max
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
  -- check.lua's `abs(now)`: the microseconds zero-padded to six digits, then 000.
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

-- Floor division and remainder, exact below 2^53 (check.lua's `divmod`).
local function divmod(a, b)
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
    r = r + b
  elseif r >= b then
    q = q + 1
    r = r - b
  end
  return q, r
end

-- A decimal string of nanoseconds, relative to B (check.lua's `rel`).
local function rel(s)
  local n = #s
  if n <= 9 then
    return (0 - B) * E9 + tonumber(s)
  end
  return (tonumber(sub(s, 1, n - 9)) - B) * E9 + tonumber(sub(s, n - 8))
end

-- A time relative to B as a decimal string (check.lua's `abs`).
local function abs(r)
  local q, ns = divmod(r, E9)
  local sec = B + q
  if sec < 0 then
    return '0'
  elseif sec == 0 then
    return format('%d', ns)
  end
  return format('%d%09d', sec, ns)
end

-- floor(a*b/c) and the remainder (check.lua's `muldiv`).
local function muldiv(a, b, c)
  local p = a * b
  if p < 9007199254740992 then
    return divmod(p, c)
  end
  local qb, rb = divmod(b, c)
  local bits = {}
  while a > 0 do
    local bit = a % 2
    bits[#bits + 1] = bit
    a = (a - bit) / 2
  end
  local q, r = 0, 0
  for i = #bits, 1, -1 do
    q = q * 2
    r = r * 2
    if r >= c then
      r = r - c
      q = q + 1
    end
    if bits[i] == 1 then
      q = q + qb
      r = r + rb
      if r >= c then
        r = r - c
        q = q + 1
      end
    end
  end
  return q, r
end

-- Smallest elapsed time e in a window at which ceil(prev·(P−e)/P) <= room.
local function elapsed_for_room(prev, room, P)
  if prev <= room then
    return 0
  end
  local fit = muldiv(room, P, prev)
  return P - fit
end

local P = tonumber(ARGV[first + 1])
local n = tonumber(ARGV[first + 2])
local cost = tonumber(ARGV[first + 3])
local values = redis.call('MGET', KEYS[1], KEYS[2])

-- A penalty block refuses it, whatever the window holds.
local block = values[2]
if block then
  local u = rel(block)
  if u > now then
    return { 0, now_s, 0, 1, n, 0, u - now, u - now, 0 }
  end
end

-- window.load: "start prev cur next idle_at".
-- (check.lua's ZERO, absolute zero relative to B, when there is none.)
local s, p, c, x, idle = -B * E9, 0, 0, 0, -B * E9
local v = values[1]
if v then
  local vs, vp, vc, vx, vi = string.match(v, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
  if vs then
    s, p, c, x, idle = rel(vs), tonumber(vp), tonumber(vc), tonumber(vx), rel(vi)
  end
end

-- window_roll to the window of now: window_start(now, P), with `origin_mod(P)` = (B·1e9) mod P
-- so that windows align to multiples of the period in absolute time.
local origin = 0
do
  local _, a = divmod(B, P)
  local _, b = divmod(E9, P)
  while b > 0 do
    if b % 2 == 1 then
      origin = origin + a
      if origin >= P then
        origin = origin - P
      end
    end
    a = a * 2
    if a >= P then
      a = a - P
    end
    b = floor(b / 2)
  end
end
local _, into = divmod(origin + now, P)
local w = now - into
local dirty = false
if w > s then
  if w == s + P and (c ~= 0 or x ~= 0 or p ~= 0) then
    p = c
    c = x
  elseif w == s + 2 * P then
    p = x
    c = 0
  else
    p = 0
    c = 0
  end
  x = 0
  s = w
  dirty = true
end

-- window.apply at now.
local e_now = math.min(max(now - s, 0), P - 1)
-- weighted: ceil(prev·(P−e)/P)
local wq, wr = muldiv(p, P - e_now, P)
if wr > 0 then
  wq = wq + 1
end
local used = wq + c
local e_at = max(max(now, now) - s, 0)
local at = nil
if c + cost <= n and e_at < P then
  local e = max(elapsed_for_room(p, n - c - cost, P), e_now, e_at)
  if e < P then
    at = s + e
  end
end
local in_next = false
local feasible = true
if at == nil then
  in_next = true
  local e = P
  if x + cost <= n then
    e = elapsed_for_room(c, n - (x + cost), P)
  end
  -- No room before the next window ends: refused (sliding_window.rs).
  feasible = e < P and e_at < 2 * P
  at = max(s + P + e, s + e_at)
end
local wait = max(at - now, 0)
local allowed = wait <= tonumber(ARGV[first + 4]) and feasible
if allowed then
  if in_next then
    x = x + cost
  else
    c = c + cost
  end
  local span = 2
  if x > 0 then
    span = 3
  end
  idle = s + P * span
  dirty = true
end
local reset_at
if x > 0 or (allowed and in_next) then
  reset_at = s + 3 * P
elseif c > 0 then
  reset_at = s + 2 * P
elseif p > 0 then
  reset_at = s + P
else
  reset_at = now
end
local spent = 0
if allowed and not in_next then
  spent = cost
end
local remaining = max(n - (used + spent), 0)

-- window.save, when rolled or committed: idle already is no state at all.
if dirty then
  if idle <= now then
    redis.call('DEL', KEYS[1])
  else
    local ms = math.ceil((idle - now) / 1000000)
    if ms < floor_ms then
      ms = floor_ms
    end
    local state = abs(s) .. ' ' .. format('%d %d %d ', p, c, x) .. abs(idle)
    redis.call('SET', KEYS[1], state, 'PX', format('%d', ms))
  end
end

if allowed then
  return { 1, now_s, 1, 0, n, remaining, max(reset_at - now, 0), 0, wait }
end
return { 0, now_s, 0, 0, n, remaining, max(reset_at - now, 0), max(wait, 1), 0 }
