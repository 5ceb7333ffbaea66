-- tollgate: every rate-limit decision, atomically, in one script.
--
-- This mirrors crates/tollgate/src/algorithm/*.rs exactly (same integer arithmetic in
-- nanoseconds, same rounding, same delay reservations, same snapshot fields); the store
-- conformance suite proves the match. The protocol is described in src/script.rs.
--
-- Lua numbers are doubles, exact for integers below 2^53 only, while nanoseconds since the Unix
-- epoch are about 2^61. So absolute times are stored as decimal strings (exact), and all
-- arithmetic runs on times relative to B, the current whole second: they stay far below 2^53
-- because the Rust side refuses quotas whose periods exceed 2^51 ns (about 26 days).
--
-- ARGV[1] mode: c = check (peek all, then commit all; one check commits at once),
--               p = peek only, m = commit only, r = refund, b = block
-- ARGV[2] now: '' for the server's TIME, or nanoseconds as a decimal string (test clocks)
-- ARGV[3] the least TTL to set, in milliseconds (0 in production; long with a test clock, whose
--         time does not move with Redis's)
-- ARGV[4] the number of checks N; then per check 7 arguments:
--         algorithm (g, f, w, l), period, emission interval, amount, burst, cost, max wait
--         (mode r: the committed snapshot's wait in place of max wait;
--          mode b: one "check" whose cost slot holds the block's seconds and max-wait slot its
--          sub-second nanoseconds)
-- KEYS: per check, its state key then its block key.
--
-- Reply: { all passed (1/0), now as a decimal string,
--          then per check: allowed, blocked, limit, remaining, reset_after, retry_after, wait }

local E9 = 1000000000
local mode = ARGV[1]
local floor_ms = tonumber(ARGV[3])
local count = tonumber(ARGV[4])

-- Floor division and remainder that stay exact for integers below 2^53 (a/b may round up to
-- the next integer; correct by one).
local function divmod(a, b)
  local q = math.floor(a / b)
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

local function idiv(a, b)
  local q = divmod(a, b)
  return q
end

-- Splits a decimal string of nanoseconds into whole seconds and nanoseconds.
local function split(s)
  local n = #s
  if n <= 9 then
    return 0, tonumber(s)
  end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

local B, now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  B = tonumber(t[1])
  now = tonumber(t[2]) * 1000
else
  B, now = split(ARGV[2])
end
-- Absolute zero (the Rust side's saturation point), relative to B.
local ZERO = -B * E9

local function rel(s)
  local sec, ns = split(s)
  return (sec - B) * E9 + ns
end

local function abs(r)
  local q, ns = divmod(r, E9)
  local sec = B + q
  if sec < 0 then
    return '0'
  elseif sec == 0 then
    return string.format('%d', ns)
  end
  return string.format('%d%09d', sec, ns)
end

-- Milliseconds for PEXPIRE until `idle_at`, or nil when the state is idle already (then it is
-- as good as none, and is deleted). As a decimal string: Redis may pass a large Lua number on
-- as `1e+08`, which PX and PEXPIRE refuse.
local function ttl_ms(idle_at)
  if idle_at <= now then
    return nil
  end
  local ms = math.ceil((idle_at - now) / 1000000)
  if ms < floor_ms then
    ms = floor_ms
  end
  return string.format('%d', ms)
end

local function snap(allowed, blocked, limit, remaining, reset, retry, wait)
  return { allowed, blocked, limit, remaining, reset, retry, wait }
end

---------------------------------------------------------------------------------------------
-- Everything below is made only when a check needs it: Redis runs the whole script on every
-- call, and creating every function each time costs more than a GCRA decision's arithmetic.

-- The arithmetic of the window algorithms.
local windows_made
local function windows()
  if windows_made then
    return windows_made
  end
  -- floor(a*b/c) and the remainder, exact for a < 2^53, b < 2^53, c <= 2^51 and a result below
  -- 2^53 (the u128 arithmetic of the Rust side), by shift-and-add over the bits of a.
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

  -- (B * 1e9) mod m, so that windows align to multiples of the period in absolute time.
  local function origin_mod(m)
    local _, a = divmod(B, m)
    local _, b = divmod(E9, m)
    local r = 0
    while b > 0 do
      if b % 2 == 1 then
        r = r + a
        if r >= m then
          r = r - m
        end
      end
      a = a * 2
      if a >= m then
        a = a - m
      end
      b = math.floor(b / 2)
    end
    return r
  end

  -- The start of the period-aligned window holding `t` (absolute `t / P * P`), relative to B.
  local function window_start(t, P)
    local _, r = divmod(origin_mod(P) + t, P)
    return t - r
  end

  windows_made = { muldiv = muldiv, window_start = window_start }
  return windows_made
end

local makers = {}

---------------------------------------------------------------------------------------------
-- GCRA (gcra.rs). State: the theoretical arrival time, as a decimal string.
function makers.g()
  local gcra = {}

  function gcra.load(key)
    local v = redis.call('GET', key)
    return { tat = v and rel(v) or nil }
  end

  function gcra.save(key, st)
    local ms = ttl_ms(st.tat)
    if ms then
      redis.call('SET', key, abs(st.tat), 'PX', ms)
    else
      redis.call('DEL', key)
    end
  end

  function gcra.apply(st, q, c, max_wait, peek)
    local t = q.T
    local cap = t * q.burst
    local base = now
    if st.tat and st.tat > now then
      base = st.tat
    end
    local new_tat = base + t * c
    local allow_at = new_tat - cap
    if allow_at <= now or allow_at - now <= max_wait then
      local wait = 0
      if allow_at > now then
        wait = allow_at - now
      end
      local remaining = idiv(math.max(now + cap - new_tat, 0), t)
      if not peek then
        st.tat = new_tat
        st.dirty = true
      end
      return snap(1, 0, q.burst, remaining, new_tat - now, 0, wait)
    end
    local remaining = idiv(math.max(now + cap - base, 0), t)
    return snap(0, 0, q.burst, remaining, base - now, allow_at - now, 0)
  end

  function gcra.refund(st, q, c, _)
    if not st.tat then
      return
    end
    local v = st.tat - q.T * c
    if v < ZERO then
      v = ZERO
    end
    st.tat = v
    st.dirty = true
  end
  return gcra
end

---------------------------------------------------------------------------------------------
-- Fixed window (fixed_window.rs). State: "end count next", end as a decimal string.
function makers.f()
  local fixed = {}
  local window_start = windows().window_start

  function fixed.load(key)
    local v = redis.call('GET', key)
    if not v then
      return { e = nil, c = 0, x = 0 }
    end
    local e, c, x = string.match(v, '^(%d+) (%d+) (%d+)$')
    if not e then
      return { e = nil, c = 0, x = 0 }
    end
    return { e = rel(e), c = tonumber(c), x = tonumber(x) }
  end

  function fixed.save(key, st, P)
    local idle_at = st.e
    if st.x > 0 then
      -- Delayed checks reserved the next window: idle once that one is over too.
      idle_at = st.e + P
    end
    local ms = ttl_ms(idle_at)
    if ms then
      redis.call('SET', key, abs(st.e) .. ' ' .. string.format('%d %d', st.c, st.x), 'PX', ms)
    else
      redis.call('DEL', key)
    end
  end

  local function fixed_roll(st, P)
    if st.e and now < st.e then
      return
    end
    local e = window_start(now, P) + P
    if st.e and now < st.e + P then
      st.c = st.x
    else
      st.c = 0
    end
    st.x = 0
    st.e = e
    st.dirty = true
  end

  function fixed.apply(st, q, c, max_wait, peek)
    local P, n = q.P, q.n
    fixed_roll(st, P)
    local to_end = st.e - now
    local reset = to_end
    if st.x > 0 then
      reset = to_end + P
    end
    if st.c + c <= n then
      local pending = 0
      if peek then
        pending = c
      else
        st.c = st.c + c
        st.dirty = true
      end
      return snap(1, 0, n, n - st.c - pending, reset, 0, 0)
    elseif st.x + c <= n and to_end <= max_wait then
      if not peek then
        st.x = st.x + c
        st.dirty = true
      end
      return snap(1, 0, n, 0, to_end + P, 0, to_end)
    end
    local retry = to_end + P
    if st.x + c <= n then
      retry = to_end
    end
    return snap(0, 0, n, math.max(n - st.c, 0), reset, retry, 0)
  end

  -- `now` is the commit's time, read inside the commit's script: the refund, a round trip
  -- later, undoes the commit in the window it counted in (its own, or the next one for a
  -- delayed check), where that window still counts, and not at all once another check has
  -- moved the state past it. (The in-memory store refunds at once, into the state's window.)
  function fixed.refund(st, q, c, wait)
    local P = q.P
    fixed_roll(st, P)
    local counted = window_start(now, P) + P
    if wait > 0 then
      counted = counted + P
    end
    if counted == st.e then
      st.c = math.max(st.c - c, 0)
    elseif counted == st.e + P then
      st.x = math.max(st.x - c, 0)
    end
    st.dirty = true
  end
  return fixed
end

---------------------------------------------------------------------------------------------
-- Sliding-window counter (sliding_window.rs). State: "start prev cur next idle_at".
function makers.w()
  local window = {}
  local W = windows()
  local muldiv, window_start = W.muldiv, W.window_start

  function window.load(key)
    local v = redis.call('GET', key)
    if v then
      local s, p, c, x, i = string.match(v, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
      if s then
        return { s = rel(s), p = tonumber(p), c = tonumber(c), x = tonumber(x), i = rel(i) }
      end
    end
    return { s = ZERO, p = 0, c = 0, x = 0, i = ZERO }
  end

  function window.save(key, st)
    local ms = ttl_ms(st.i)
    if ms then
      local v = abs(st.s) .. ' ' .. string.format('%d %d %d ', st.p, st.c, st.x) .. abs(st.i)
      redis.call('SET', key, v, 'PX', ms)
    else
      redis.call('DEL', key)
    end
  end

  -- ceil(prev·(P−e)/P)
  local function weighted(prev, elapsed, P)
    local q, r = muldiv(prev, P - elapsed, P)
    if r > 0 then
      q = q + 1
    end
    return q
  end

  -- Smallest elapsed time e in a window at which ceil(prev·(P−e)/P) <= room.
  local function elapsed_for_room(prev, room, P)
    if prev <= room then
      return 0
    end
    local fit = muldiv(room, P, prev)
    return P - fit
  end

  local function window_roll(st, P)
    local w = window_start(now, P)
    if w <= st.s then
      return
    end
    if w == st.s + P and (st.c ~= 0 or st.x ~= 0 or st.p ~= 0) then
      st.p = st.c
      st.c = st.x
    elseif w == st.s + 2 * P then
      st.p = st.x
      st.c = 0
    else
      st.p = 0
      st.c = 0
    end
    st.x = 0
    st.s = w
    st.dirty = true
  end

  function window.apply(st, q, c, max_wait, peek)
    local P, n = q.P, q.n
    window_roll(st, P)
    local e_now = math.min(math.max(now - st.s, 0), P - 1)
    local used = weighted(st.p, e_now, P) + st.c
    local at = nil
    if st.c + c <= n then
      local e = math.max(elapsed_for_room(st.p, n - st.c - c, P), e_now)
      if e < P then
        at = st.s + e
      end
    end
    local in_next = false
    if at == nil then
      in_next = true
      local e = P
      if st.x + c <= n then
        e = elapsed_for_room(st.c, n - (st.x + c), P)
      end
      at = st.s + P + e
    end
    local wait = math.max(at - now, 0)
    local allowed = wait <= max_wait and not (in_next and st.x + c > n)
    if allowed and not peek then
      if in_next then
        st.x = st.x + c
      else
        st.c = st.c + c
      end
      local span = 2
      if st.x > 0 then
        span = 3
      end
      st.i = st.s + P * span
      st.dirty = true
    end
    local reset_at
    if st.x > 0 or (allowed and in_next) then
      reset_at = st.s + 3 * P
    elseif st.c > 0 or (allowed and peek) then
      reset_at = st.s + 2 * P
    elseif st.p > 0 then
      reset_at = st.s + P
    else
      reset_at = now
    end
    local spent = 0
    if allowed and not in_next then
      spent = c
    end
    -- The Rust side adds `spent` as pending (peek) or as committed (commit): the same sum.
    local remaining = math.max(n - (used + spent), 0)
    if allowed then
      return snap(1, 0, n, remaining, math.max(reset_at - now, 0), 0, wait)
    end
    return snap(0, 0, n, remaining, math.max(reset_at - now, 0), math.max(wait, 1), 0)
  end

  -- As fixed.refund: the window the commit at `now` counted in, as the next, current or
  -- previous one, or nothing once it is over.
  function window.refund(st, q, c, wait)
    local P = q.P
    window_roll(st, P)
    local counted = window_start(now, P)
    if now + wait >= counted + P then
      counted = counted + P
    end
    if counted == st.s then
      st.c = math.max(st.c - c, 0)
    elseif counted == st.s + P then
      st.x = math.max(st.x - c, 0)
    elseif counted + P == st.s then
      st.p = math.max(st.p - c, 0)
    end
    st.dirty = true
  end
  return window
end

---------------------------------------------------------------------------------------------
-- Sliding log (sliding_log.rs). State: a list of "time cost" entries sorted by time. Changes
-- are written to the list as they happen (the script is atomic), mirrored in `st.entries`.
function makers.l()
  local log = {}

  function log.load(key)
    local raw = redis.call('LRANGE', key, 0, -1)
    local entries = {}
    local sum = 0
    for i = 1, #raw do
      local ts, c = string.match(raw[i], '^(%d+) (%d+)$')
      if ts then
        local cost = tonumber(c)
        entries[#entries + 1] = { ts = rel(ts), c = cost, s = raw[i] }
        sum = sum + cost
      end
    end
    return { key = key, entries = entries, sum = sum }
  end

  function log.save(key, st, P)
    local last = st.entries[#st.entries]
    local ms = last and ttl_ms(last.ts + P)
    if ms then
      redis.call('PEXPIRE', key, ms)
    else
      redis.call('DEL', key)
    end
  end

  local function log_prune(st, P)
    while st.entries[1] and st.entries[1].ts + P <= now do
      local e = table.remove(st.entries, 1)
      st.sum = st.sum - e.c
      redis.call('LPOP', st.key)
      st.dirty = true
    end
  end

  local function log_earliest(st, P, n, c)
    local sum = st.sum
    if sum + c <= n then
      return now
    end
    for i = 1, #st.entries do
      local e = st.entries[i]
      sum = sum - e.c
      if sum + c <= n then
        return math.max(e.ts + P, now)
      end
    end
    return now
  end

  local function log_insert(st, ts, c)
    local at = #st.entries + 1
    for i = 1, #st.entries do
      if st.entries[i].ts > ts then
        at = i
        break
      end
    end
    local s = abs(ts) .. ' ' .. string.format('%d', c)
    if at > #st.entries then
      redis.call('RPUSH', st.key, s)
    else
      redis.call('LINSERT', st.key, 'BEFORE', st.entries[at].s, s)
    end
    table.insert(st.entries, at, { ts = ts, c = c, s = s })
    st.sum = st.sum + c
    st.dirty = true
  end

  function log.apply(st, q, c, max_wait, peek)
    local P, n = q.P, q.n
    log_prune(st, P)
    local at = log_earliest(st, P, n, c)
    local wait = at - now
    local last = ZERO
    if st.entries[#st.entries] then
      last = st.entries[#st.entries].ts
    end
    if wait <= max_wait then
      if not peek then
        log_insert(st, at, c)
      end
      local used = st.sum
      if peek then
        used = used + c
      end
      last = math.max(last, at)
      return snap(1, 0, n, math.max(n - used, 0), math.max(last + P - now, 0), 0, wait)
    end
    return snap(0, 0, n, math.max(n - st.sum, 0), math.max(last + P - now, 0), wait, 0)
  end

  function log.refund(st, q, c, wait)
    local ts = now + wait
    for i = #st.entries, 1, -1 do
      local e = st.entries[i]
      if e.ts == ts and e.c == c then
        redis.call('LREM', st.key, -1, e.s)
        table.remove(st.entries, i)
        st.sum = st.sum - c
        st.dirty = true
        return
      end
    end
  end
  return log
end

---------------------------------------------------------------------------------------------
-- Blocks (penalties): the block key holds the time until which the key is refused.

if mode == 'b' then
  local key = KEYS[2]
  local secs = tonumber(ARGV[10])
  local nanos = tonumber(ARGV[11])
  -- until = now + duration, kept as whole seconds and nanoseconds so that long blocks stay exact.
  local q, ns = divmod(now + nanos, E9)
  local usec = B + q + secs
  local old = redis.call('GET', key)
  if old then
    local osec, ons = split(old)
    if osec > usec or (osec == usec and ons >= ns) then
      return { 1, abs(now) }
    end
  end
  local until_s
  if usec == 0 then
    until_s = string.format('%d', ns)
  else
    until_s = string.format('%d%09d', usec, ns)
  end
  local ms = math.ceil(((usec - B) * E9 + ns - now) / 1000000)
  if ms < floor_ms then
    ms = floor_ms
  end
  if ms < 1 then
    ms = 1
  end
  redis.call('SET', key, until_s, 'PX', string.format('%d', ms))
  return { 1, abs(now) }
end

---------------------------------------------------------------------------------------------
-- Checks.

local algorithms = {}
local checks = {}
local states = {}
for i = 1, count do
  local a = 4 + (i - 1) * 7
  local code = ARGV[a + 1]
  local alg = algorithms[code]
  if not alg and makers[code] then
    alg = makers[code]()
    algorithms[code] = alg
  end
  if not alg then
    return redis.error_reply('tollgate: unknown algorithm ' .. tostring(ARGV[a + 1]))
  end
  local key = KEYS[2 * i - 1]
  local q = {
    P = tonumber(ARGV[a + 2]),
    T = tonumber(ARGV[a + 3]),
    n = tonumber(ARGV[a + 4]),
    burst = tonumber(ARGV[a + 5]),
  }
  -- One state per key, shared by the checks of a batch that name the same key.
  local st = states[key]
  if not st then
    st = alg.load(key)
    st.alg = alg
    st.q = q
    states[key] = st
    states[#states + 1] = key
  end
  checks[i] = {
    alg = alg,
    code = code,
    st = st,
    q = q,
    c = tonumber(ARGV[a + 6]),
    w = tonumber(ARGV[a + 7]),
    block = KEYS[2 * i],
  }
end

local function capacity(ch)
  if ch.code == 'g' then
    return ch.q.burst
  end
  return ch.q.n
end

local function apply(ch, peek)
  local b = redis.call('GET', ch.block)
  if b then
    local u = rel(b)
    if u > now then
      return snap(0, 1, capacity(ch), 0, u - now, u - now, 0)
    end
  end
  return ch.alg.apply(ch.st, ch.q, ch.c, ch.w, peek)
end

local out = {}
local all = 1

local function commit_all()
  for i = 1, count do
    local s = apply(checks[i], false)
    out[i] = s
    if s[1] == 0 then
      -- Lost to another check of this batch on the same key: undo what was taken.
      for j = 1, i - 1 do
        checks[j].alg.refund(checks[j].st, checks[j].q, checks[j].c, out[j][7])
      end
      return 0
    end
  end
  return 1
end

if mode == 'r' then
  for i = 1, count do
    local ch = checks[i]
    ch.alg.refund(ch.st, ch.q, ch.c, ch.w)
    out[i] = snap(1, 0, capacity(ch), 0, 0, 0, 0)
  end
elseif mode == 'm' or (mode == 'c' and count == 1) then
  all = commit_all()
  for i = #out + 1, count do
    out[i] = apply(checks[i], true)
  end
else
  for i = 1, count do
    out[i] = apply(checks[i], true)
    if out[i][1] == 0 then
      all = 0
    end
  end
  if all == 1 and mode == 'c' then
    all = commit_all()
  end
end

for i = 1, #states do
  local key = states[i]
  local st = states[key]
  if st.dirty then
    st.alg.save(key, st, st.q.P)
  end
end

local reply = { all, abs(now) }
for i = 1, count do
  local s = out[i]
  for j = 1, 7 do
    reply[#reply + 1] = s[j]
  end
end
return reply
