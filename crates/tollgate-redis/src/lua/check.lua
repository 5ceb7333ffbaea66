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
-- ARGV[1] mode: c = check (find when the request goes, then commit all at that time; one check
--                   commits at once),
--               p = peek only (find when it goes, commit nothing),
--               m = commit only, each check at now + its wait slot, exactly (the second phase
--                   across cluster slots, with the wait the first phase found),
--               r = refund, b = block
-- ARGV[2] now: '' for the server's TIME, or nanoseconds as a decimal string (test clocks)
-- ARGV[3] the least TTL to set, in milliseconds (0 in production; long with a test clock, whose
--         time does not move with Redis's)
-- ARGV[4] the number of checks N; then per check 7 arguments:
--         algorithm (g, f, w, l), period, emission interval, amount, burst, cost, max wait
--         (mode r: the committed snapshot's wait in place of max wait; mode m: the wait to go at;
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

-- The functions of algorithm `code`, made when a check needs them (nil for an unknown code):
-- one closure per call instead of one per algorithm (each costs Redis time on every call).
local function make(code)
  ---------------------------------------------------------------------------------------------
  -- GCRA (gcra.rs). State: the theoretical arrival time, as a decimal string.
  if code == 'g' then
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

    -- `at` (>= now): the time the check goes at the earliest (another limit may delay it).
    function gcra.apply(st, q, c, at, max_wait, peek)
      local t = q.T
      local cap = t * q.burst
      local base = at
      if st.tat and st.tat > at then
        base = st.tat
      end
      local new_tat = base + t * c
      local allow_at = math.max(new_tat - cap, at)
      if allow_at - now <= max_wait then
        local remaining = idiv(math.max(now + cap - new_tat, 0), t)
        if not peek then
          st.tat = new_tat
          st.dirty = true
        end
        return snap(1, 0, q.burst, remaining, new_tat - now, 0, allow_at - now)
      end
      local held = now
      if st.tat and st.tat > now then
        held = st.tat
      end
      local remaining = idiv(math.max(now + cap - held, 0), t)
      return snap(0, 0, q.burst, remaining, held - now, allow_at - now, 0)
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
  if code == 'f' then
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

    function fixed.apply(st, q, c, at, max_wait, peek)
      local P, n = q.P, q.n
      fixed_roll(st, P)
      local to_end = st.e - now
      local reset = to_end
      if st.x > 0 then
        reset = to_end + P
      end
      -- A check told to go later than the next window cannot be counted here: refused.
      local next_fits = st.x + c <= n and at < st.e + P
      local go_next = math.max(at, st.e) - now
      if at < st.e and st.c + c <= n and at - now <= max_wait then
        local pending = 0
        if peek then
          pending = c
        else
          st.c = st.c + c
          st.dirty = true
        end
        return snap(1, 0, n, n - st.c - pending, reset, 0, at - now)
      elseif next_fits and go_next <= max_wait then
        if not peek then
          st.x = st.x + c
          st.dirty = true
        end
        return snap(1, 0, n, 0, to_end + P, 0, go_next)
      end
      local retry = math.max(to_end + P, at - now)
      if next_fits then
        retry = go_next
      end
      return snap(0, 0, n, math.max(n - st.c, 0), reset, math.max(retry, 1), 0)
    end

    -- `now` is the commit's time, read inside the commit's script: the refund, a round trip
    -- later, undoes the commit in the window it counted in (its own, or the next one for a
    -- delayed check), where that window still counts, and not at all once another check has
    -- moved the state past it. (The in-memory store refunds at once, into the state's window.)
    function fixed.refund(st, q, c, wait)
      local P = q.P
      fixed_roll(st, P)
      -- The end of the window of the time it went.
      local counted = window_start(now + wait, P) + P
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
  if code == 'w' then
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

    function window.apply(st, q, c, not_before, max_wait, peek)
      local P, n = q.P, q.n
      window_roll(st, P)
      local e_now = math.min(math.max(now - st.s, 0), P - 1)
      local used = weighted(st.p, e_now, P) + st.c
      local e_at = math.max(math.max(not_before, now) - st.s, 0)
      local at = nil
      if st.c + c <= n and e_at < P then
        local e = math.max(elapsed_for_room(st.p, n - st.c - c, P), e_now, e_at)
        if e < P then
          at = st.s + e
        end
      end
      local in_next = false
      local feasible = true
      if at == nil then
        in_next = true
        local e = P
        if st.x + c <= n then
          e = elapsed_for_room(st.c, n - (st.x + c), P)
        end
        -- No room before the next window ends, or told to go later: refused (sliding_window.rs).
        feasible = e < P and e_at < 2 * P
        at = math.max(st.s + P + e, st.s + e_at)
      end
      local wait = math.max(at - now, 0)
      local allowed = wait <= max_wait and feasible
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
  if code == 'l' then
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

    -- The earliest time >= at at which c more fits (sliding_log.rs: LogState::earliest).
    local function log_earliest(st, P, n, c, at)
      local sum = st.sum
      for i = 1, #st.entries do
        local e = st.entries[i]
        local gone = e.ts + P
        if gone > at and sum + c <= n then
          return at
        end
        sum = sum - e.c
        if sum + c <= n then
          return math.max(gone, at)
        end
      end
      return at
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

    function log.apply(st, q, c, not_before, max_wait, peek)
      local P, n = q.P, q.n
      log_prune(st, P)
      local at = log_earliest(st, P, n, c, math.max(not_before, now))
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
  return nil
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
  if not alg then
    alg = make(code)
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

-- Checks `ch` going no earlier than `at`, waiting at most `max_wait` past now.
local function apply(ch, at, max_wait, peek)
  local b = redis.call('GET', ch.block)
  if b then
    local u = rel(b)
    if u > now then
      return snap(0, 1, capacity(ch), 0, u - now, u - now, 0)
    end
  end
  return ch.alg.apply(ch.st, ch.q, ch.c, at, max_wait, peek)
end

local out = {}
local all = 1

-- Commits check i at at_of(i), exactly; all or none.
local function commit_all(at_of)
  for i = 1, count do
    local at = at_of(i)
    local s = apply(checks[i], at, at - now, false)
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

-- As store/memory.rs `settle`: the earliest time every check but `skip` has room, within
-- `bound` of now, peeking from the latest time any of them gave until none moves it; nil, with
-- the refusal in `out`, when one has no room within `bound` or 8 rounds did not settle.
local function settle(skip, bound)
  local at = now
  for _ = 1, 8 do
    local nxt, ok = at, true
    for i = 1, count do
      if i ~= skip then
        local s = apply(checks[i], at, bound, true)
        out[i] = s
        if s[1] == 0 then
          ok = false
        end
        if now + s[7] > nxt then
          nxt = now + s[7]
        end
      end
    end
    if not ok then
      return nil
    end
    if nxt == at then
      return at
    end
    at = nxt
  end
  local i = 1
  if skip == 1 then
    i = 2
  end
  local s = out[i]
  out[i] = snap(0, s[2], s[3], s[4], s[5], at - now, 0)
  return nil
end

-- As store/memory.rs `go_time`: when the request goes, each limit waiting no longer than its
-- own max wait for the room it needs itself; nil, with the refusal in `out`, otherwise.
local function go_time()
  local bound = 0
  for i = 1, count do
    if checks[i].w > bound then
      bound = checks[i].w
    end
  end
  local at = settle(nil, bound)
  if not at then
    return nil
  end
  local wait = at - now
  if wait == 0 then
    return at
  end
  for i = 1, count do
    if wait > checks[i].w then
      local others = settle(i, bound)
      if not others then
        return nil
      end
      if others < at then
        local s = apply(checks[i], now, checks[i].w, true)
        if s[1] == 1 then
          s = snap(0, s[2], s[3], s[4], s[5], wait, 0)
        end
        out[i] = s
        return nil
      end
    end
  end
  return at
end

if mode == 'r' then
  for i = 1, count do
    local ch = checks[i]
    ch.alg.refund(ch.st, ch.q, ch.c, ch.w)
    out[i] = snap(1, 0, capacity(ch), 0, 0, 0, 0)
  end
elseif mode == 'c' and count == 1 then
  out[1] = apply(checks[1], now, checks[1].w, false)
  all = out[1][1]
elseif mode == 'm' then
  all = commit_all(function(i)
    return now + checks[i].w
  end)
  for i = #out + 1, count do
    out[i] = apply(checks[i], now + checks[i].w, checks[i].w, true)
  end
else
  local at = go_time()
  if not at then
    all = 0
  elseif mode == 'c' then
    all = commit_all(function()
      return at
    end)
  end
end

for i = 1, #states do
  local key = states[i]
  local st = states[key]
  if st.dirty then
    st.alg.save(key, st, st.q.P)
  end
end

-- One check (the common case): the reply in one constructor (growing a table costs more).
if count == 1 then
  local s = out[1]
  return { all, abs(now), s[1], s[2], s[3], s[4], s[5], s[6], s[7] }
end
local reply = { all, abs(now) }
for i = 1, count do
  local s = out[i]
  for j = 1, 7 do
    reply[#reply + 1] = s[j]
  end
end
return reply
