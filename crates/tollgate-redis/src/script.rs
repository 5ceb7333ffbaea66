//! The Lua scripts and their protocol (documented at the top of `lua/check.lua`).
//!
//! Scripts run by `EVALSHA`; the redis crate's [`Script`] loads them and retries on `NOSCRIPT`
//! (after a restart or `SCRIPT FLUSH`, or the first time a script is run). In a cluster,
//! `SCRIPT LOAD` goes to every node.
//!
//! Every call is built in `check.lua`'s layout; [`Call::script`] then picks the script that runs
//! it. Redis runs a script's whole body on every call, so the general script pays for all it can
//! do each time (about twice the Redis CPU of a plain GCRA script): checks that cannot use that
//! generality go to a script that does only what they need, with the same decisions, snapshots
//! and state (`lua/gcra.lua`, `lua/gcra_batch.lua`, `lua/window.lua`).

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};
use tollgate::{Algorithm, Check, Quota, Snapshot, StoreError};

use crate::error::Error;
use crate::keys::CheckKeys;
use crate::store::RedisLimit;

/// Every decision (all algorithms, peek/commit/refund) and penalty blocks.
pub(crate) static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/check.lua")));

/// One GCRA check in mode `c`: the hot path (see the top of `lua/gcra.lua`).
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));

/// Several GCRA checks in mode `c` on distinct state keys, none of which may wait (see the top
/// of `lua/gcra_batch.lua`).
pub(crate) static GCRA_BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra_batch.lua")));

/// One sliding-window check in mode `c` (see the top of `lua/window.lua`).
pub(crate) static WINDOW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/window.lua")));

/// Distributed concurrency leases.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/lease.lua")));

/// The scripts' integers are doubles: the Rust side keeps every duration they compute with
/// below 2^51 ns (about 26 days) so that the sums they form stay exact below 2^53.
pub(crate) const MAX_SPAN_NANOS: u64 = 1 << 51;

/// The script modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Peek every check, then commit every check (one check: commit at once).
    Check,
    /// Peek only (first phase across cluster slots).
    Peek,
    /// Commit only, refunding within the call when one is refused (second phase).
    Commit,
    /// Give back what a commit took.
    Refund,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Check => "c",
            Mode::Peek => "p",
            Mode::Commit => "m",
            Mode::Refund => "r",
        }
    }
}

pub(crate) fn algorithm_code(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => "g",
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "w",
        Algorithm::SlidingLog => "l",
        // `Algorithm` is non-exhaustive: an algorithm the scripts do not know is refused by
        // `validate` before any call.
        _ => "?",
    }
}

/// Refuses quotas the scripts cannot compute exactly, and algorithms they do not know.
pub(crate) fn validate(algorithm: Algorithm, quota: &Quota) -> Result<(), StoreError> {
    let out_of_range =
        |reason| StoreError::Other(Box::new(Error::QuotaOutOfRange { quota: quota.to_string(), reason }));
    if algorithm_code(algorithm) == "?" {
        return Err(out_of_range("the Redis store does not implement this algorithm"));
    }
    if quota.period_nanos() > MAX_SPAN_NANOS {
        return Err(out_of_range("periods longer than 2^51 ns (about 26 days) are not supported"));
    }
    let span = quota.emission_interval_nanos().saturating_mul(u64::from(quota.burst().get()));
    if span > MAX_SPAN_NANOS {
        return Err(out_of_range("a full bucket (emission interval × burst) longer than 2^51 ns is not supported"));
    }
    Ok(())
}

/// Arguments per check in `check.lua`'s layout: algorithm, period, emission interval, amount,
/// burst, cost, max wait.
const CHECK_ARGS: usize = 7;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).min(MAX_SPAN_NANOS * 4)
}

/// The arguments and keys of one script call.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) keys: Vec<Vec<u8>>,
    pub(crate) args: Vec<Vec<u8>>,
}

impl Call {
    pub(crate) fn new(mode: Mode, now: &str, ttl_floor_ms: u64, count: usize) -> Self {
        let mut args = Vec::with_capacity(4 + count * CHECK_ARGS);
        args.push(mode.arg().as_bytes().to_vec());
        args.push(now.as_bytes().to_vec());
        args.push(ttl_floor_ms.to_string().into_bytes());
        args.push(count.to_string().into_bytes());
        Self { keys: Vec::with_capacity(count * 2), args }
    }

    /// Appends one check; `last` is the wait of its committed snapshot (refunds) or its max wait.
    pub(crate) fn push(&mut self, check: &Check<'_, RedisLimit>, keys: &CheckKeys, last: Duration) {
        let q = &check.quota;
        self.keys.push(keys.state.clone());
        self.keys.push(keys.block.clone());
        self.args.push(algorithm_code(check.limit.algorithm).as_bytes().to_vec());
        self.args.push(q.period_nanos().to_string().into_bytes());
        self.args.push(q.emission_interval_nanos().to_string().into_bytes());
        self.args.push(q.amount().get().to_string().into_bytes());
        self.args.push(q.burst().get().to_string().into_bytes());
        self.args.push(check.cost.to_string().into_bytes());
        self.args.push(nanos(last).to_string().into_bytes());
    }

    /// A penalty block of `duration` on the block key of `keys`.
    pub(crate) fn block(now: &str, ttl_floor_ms: u64, keys: &CheckKeys, duration: Duration) -> Self {
        // Blocks longer than a century are a century: the script formats whole seconds.
        let secs = duration.as_secs().min(100 * 365 * 86_400);
        let mut call = Self::new(Mode::Check, now, ttl_floor_ms, 1);
        call.args[0] = b"b".to_vec();
        call.keys.push(keys.state.clone());
        call.keys.push(keys.block.clone());
        for a in ["g", "1", "1", "1", "1"] {
            call.args.push(a.as_bytes().to_vec());
        }
        call.args.push(secs.to_string().into_bytes());
        call.args.push(duration.subsec_nanos().to_string().into_bytes());
        call
    }

    /// The script that runs this call: [`GCRA`] for one GCRA check in mode `c`, [`WINDOW`] for
    /// one sliding-window check; [`GCRA_BATCH`] for several GCRA checks in mode `c` on distinct
    /// state keys with no max wait; [`CHECK`] for every other call. For those batches `check.lua` decides each check alone at now (its
    /// search for a common time settles at once, and its peeks equal its commits), which is all
    /// the two small scripts do; `tests` below compares them with `check.lua` on random
    /// sequences.
    pub(crate) fn script(&self) -> &'static Script {
        let checks = self.args.len().saturating_sub(4) / CHECK_ARGS;
        if self.args.first().map(Vec::as_slice) != Some(b"c")
            || checks == 0
            || self.args.len() != 4 + checks * CHECK_ARGS
            || self.keys.len() != checks * 2
        {
            return &CHECK;
        }
        let check = |i: usize| &self.args[4 + i * CHECK_ARGS..4 + (i + 1) * CHECK_ARGS];
        if checks == 1 && check(0)[0] == b"w" {
            return &WINDOW;
        }
        if !(0..checks).all(|i| check(i)[0] == b"g") {
            return &CHECK;
        }
        if checks == 1 {
            return &GCRA;
        }
        let no_wait = (0..checks).all(|i| check(i)[6] == b"0");
        // Checks on one state key see each other's commits in `check.lua`.
        let distinct = (0..checks).all(|i| (0..i).all(|j| self.keys[2 * i] != self.keys[2 * j]));
        if no_wait && distinct { &GCRA_BATCH } else { &CHECK }
    }

    /// The call as `script` takes it: `check.lua`'s layout, or that of the small scripts (now
    /// and the least TTL with a test clock only; then per check emission interval, burst, cost,
    /// and for `gcra.lua` max wait; for `window.lua` period, amount, cost, max wait): each
    /// argument costs Redis to parse.
    pub(crate) fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k.as_slice());
        }
        let (single, window) = (std::ptr::eq(script, &*GCRA), std::ptr::eq(script, &*WINDOW));
        if single || window || std::ptr::eq(script, &*GCRA_BATCH) {
            if !(self.args[1].is_empty() && self.args[2] == b"0") {
                inv.arg(self.args[1].as_slice()).arg(self.args[2].as_slice());
            }
            for check in self.args[4..].chunks_exact(CHECK_ARGS) {
                // Check arguments: algorithm, period, emission interval, amount, burst, cost, wait.
                let picked: &[usize] = if window {
                    &[1, 3, 5, 6]
                } else if single {
                    &[2, 4, 5, 6]
                } else {
                    &[2, 4, 5]
                };
                for &i in picked {
                    inv.arg(check[i].as_slice());
                }
            }
            return inv;
        }
        for a in &self.args {
            inv.arg(a.as_slice());
        }
        inv
    }
}

/// A decoded reply: whether all passed, the script's `now`, and one snapshot per check.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) all: bool,
    pub(crate) now: String,
    pub(crate) snapshots: Vec<Snapshot>,
}

fn protocol(what: &str) -> StoreError {
    StoreError::Protocol(format!("unexpected reply from the tollgate script: {what}"))
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(protocol(&format!("expected an integer, got {other:?}"))),
    }
}

fn duration(v: &Value) -> Result<Duration, StoreError> {
    Ok(Duration::from_nanos(u64::try_from(int(v)?).map_err(|_| protocol("a negative duration"))?))
}

pub(crate) fn decode(value: &Value, count: usize) -> Result<Reply, StoreError> {
    let Value::Array(items) = value else { return Err(protocol(&format!("expected an array, got {value:?}"))) };
    if items.len() != 2 + count * 7 {
        return Err(protocol(&format!("expected {} items, got {}", 2 + count * 7, items.len())));
    }
    let all = int(&items[0])? == 1;
    let now = match &items[1] {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => return Err(protocol(&format!("expected the time, got {other:?}"))),
    };
    let mut snapshots = Vec::with_capacity(count);
    for s in items[2..].chunks_exact(7) {
        snapshots.push(Snapshot {
            allowed: int(&s[0])? == 1,
            blocked: int(&s[1])? == 1,
            limit: u64::try_from(int(&s[2])?).map_err(|_| protocol("a negative limit"))?,
            remaining: u64::try_from(int(&s[3])?).map_err(|_| protocol("a negative remainder"))?,
            reset_after: duration(&s[4])?,
            retry_after: duration(&s[5])?,
            wait: duration(&s[6])?,
        });
    }
    Ok(Reply { all, now, snapshots })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redis::Value;

    use super::decode;

    /// Any reply Redis could send, nested a few levels.
    fn reply() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
            "[a-z0-9]{0,6}".prop_map(Value::SimpleString),
            Just(Value::Okay),
        ];
        leaf.prop_recursive(3, 64, 16, |inner| prop::collection::vec(inner, 0..16).prop_map(Value::Array))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// The script's reply is read or refused with a protocol error, never a panic, whatever
        /// Redis (or something posing as it) answers (issue 22, item 10).
        #[test]
        fn any_reply_decodes_or_is_a_protocol_error(value in reply(), count in 0usize..3) {
            match decode(&value, count) {
                Ok(reply) => prop_assert_eq!(reply.snapshots.len(), count),
                Err(err) => prop_assert!(err.to_string().contains("unexpected reply"), "{}", err),
            }
        }

        /// Well-formed replies of any numbers: decoded, or refused for a negative field.
        #[test]
        fn well_formed_replies_of_any_numbers(fields in prop::collection::vec(any::<i64>(), 7), all in 0i64..2) {
            let mut items = vec![Value::Int(all), Value::BulkString(b"1700000000123".to_vec())];
            items.extend(fields.iter().map(|n| Value::Int(*n)));
            let negative = fields[2..].iter().any(|n| *n < 0);
            match decode(&Value::Array(items), 1) {
                Ok(reply) => {
                    prop_assert!(!negative);
                    prop_assert_eq!(reply.all, all == 1);
                    prop_assert_eq!(reply.snapshots[0].limit, fields[2].unsigned_abs());
                }
                Err(_) => prop_assert!(negative),
            }
        }
    }
}

/// The small scripts against `check.lua` on a real `redis-server`: on random sequences of
/// checks, penalty blocks, refunds, two-phase commits and clock steps, each call runs on `check.lua`
/// in one key namespace and on the script [`Call::script`] picks in another, and their replies
/// (decisions, snapshots, now) and the state they leave must be the same.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod agreement {
    use std::time::Duration;

    use redis::Value;
    use redis::aio::MultiplexedConnection;
    use tollgate::Snapshot;

    use super::{CHECK, CHECK_ARGS, Call, GCRA, GCRA_BATCH, Mode, WINDOW, decode};
    use crate::test_support::{RedisServer, redis_available};

    /// A seeded generator (xorshift64*), so that a failure names its sequence.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        /// Spread over orders of magnitude: 1 ns to about `max`.
        fn log_uniform(&mut self, max: u64) -> u64 {
            let bits = 64 - max.leading_zeros();
            let b = self.below(u64::from(bits)) as u32;
            (1u64 << b) + self.below(1u64 << b)
        }
    }

    /// One limit on one key: its keys in a namespace, and its quota: GCRA (emission interval
    /// `t`, `burst`) or a sliding window (period `t`, amount `burst`).
    #[derive(Clone, Copy, Debug)]
    struct Limit {
        id: usize,
        window: bool,
        t: u64,
        burst: u64,
    }

    impl Limit {
        /// How long it takes to come back full.
        fn full(self) -> u64 {
            if self.window { self.t } else { self.t * self.burst }
        }
    }

    fn keys(ns: &str, l: Limit) -> (Vec<u8>, Vec<u8>) {
        (format!("{ns}:{{k{}}}:s", l.id).into_bytes(), format!("{ns}:{{k{}}}:b", l.id).into_bytes())
    }

    /// A call in `check.lua`'s layout, as `Call::new` and `Call::push` make it.
    fn call(mode: &str, now: &str, ns: &str, checks: &[(Limit, u64, u64)]) -> Call {
        let mut c = Call { keys: Vec::new(), args: Vec::new() };
        for a in [mode, now, "3600000", &checks.len().to_string()] {
            c.args.push(a.as_bytes().to_vec());
        }
        for &(l, cost, last) in checks {
            let (s, b) = keys(ns, l);
            c.keys.push(s);
            c.keys.push(b);
            let (code, period, t) = if l.window { ("w", l.t, (l.t / l.burst).max(1)) } else { ("g", l.full(), l.t) };
            for a in [code.to_owned(), period.to_string(), t.to_string(), l.burst.to_string()] {
                c.args.push(a.into_bytes());
            }
            for a in [l.burst.to_string(), cost.to_string(), last.to_string()] {
                c.args.push(a.into_bytes());
            }
        }
        debug_assert_eq!(c.args.len(), 4 + checks.len() * CHECK_ARGS);
        c
    }

    async fn run(con: &mut MultiplexedConnection, script: &redis::Script, call: &Call) -> Value {
        call.invocation(script).invoke_async(con).await.unwrap()
    }

    /// Per limit: its state, its block, and its state's TTL (ms; negative when none).
    async fn state(
        con: &mut MultiplexedConnection,
        ns: &str,
        limits: &[Limit],
    ) -> Vec<(Option<String>, Option<String>, i64)> {
        let mut pipe = redis::pipe();
        for &l in limits {
            let (s, b) = keys(ns, l);
            pipe.get(&s).get(&b).pttl(&s);
        }
        pipe.query_async(con).await.unwrap()
    }

    /// A committed batch, for a refund: its limits and costs, its snapshots' waits, its now.
    type Committed = (Vec<(Limit, u64)>, Vec<u64>, String);

    /// One random sequence from `seed`, starting at `start` ns.
    async fn sequence(con: &mut MultiplexedConnection, seed: u64, start: u64) -> usize {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (general, small) = (format!("g{seed}"), format!("f{seed}"));
        // Four GCRA limits and two sliding windows.
        let limits: Vec<Limit> = (0..6)
            .map(|id| {
                let burst = 1 + rng.log_uniform(60);
                if id >= 4 {
                    return Limit { id, window: true, t: rng.log_uniform(1 << 45).max(1), burst };
                }
                let t = rng.log_uniform((1u64 << 51) / burst / 4).max(1);
                Limit { id, window: false, t, burst }
            })
            .collect();
        let pick = |rng: &mut Rng| limits[rng.below(limits.len() as u64) as usize];
        let mut now = start;
        let mut small_calls = 0;
        // The last committed check batch, for refunds: its limits, costs and snapshots' waits.
        let mut last: Option<Committed> = None;
        // Edges, so that comparisons meet equality: when a refusal or a block ends or a state
        // goes idle (the clock steps to it, or 1 ns short), and a refused check with its
        // retry-after as max wait (or 1 ns less).
        let mut edge: Option<u64> = None;
        let mut redo: Option<(Limit, u64, u64)> = None;
        for step in 0..250 {
            let span = pick(&mut rng);
            let full = span.full();
            let stepped = match edge.take() {
                Some(e) if e >= now && rng.chance(40) => e - now - u64::from(e > now && rng.chance(50)),
                _ => match rng.below(10) {
                    0..=2 => 0,
                    3..=6 => rng.below(span.t * 2),
                    7 | 8 => rng.below(full * 2),
                    _ => rng.below(3_000_000_000),
                },
            };
            now += stepped;
            if stepped > 0 {
                redo = None;
            }
            let now_s = now.to_string();
            let ctx = format!("seed {seed}, start {start}, step {step}, now {now}");
            match rng.below(20) {
                0..=12 => {
                    let mut n = if rng.chance(65) { 1 } else { 2 + rng.below(2) as usize };
                    let mut picked: Vec<(Limit, u64, u64)> = Vec::new();
                    if let Some((l, cost, retry)) = redo.take().filter(|_| rng.chance(60)) {
                        n = 0;
                        picked.push((l, cost, retry - u64::from(rng.chance(50))));
                    }
                    for _ in 0..n {
                        // Now and then the same limit twice (check.lua's shared state).
                        let l = if rng.chance(10) && !picked.is_empty() { picked[0].0 } else { pick(&mut rng) };
                        let cost = match rng.below(6) {
                            0 => 0,
                            1 => rng.below(l.burst + 2),
                            _ => 1,
                        };
                        let wait = if rng.chance(if n == 1 { 50 } else { 75 }) {
                            0
                        } else {
                            rng.below(l.full() + l.full() / l.burst * 2)
                        };
                        picked.push((l, cost, wait));
                    }
                    let n = picked.len();
                    let g = call("c", &now_s, &general, &picked);
                    let f = call("c", &now_s, &small, &picked);
                    let script = f.script();
                    let eligible = n == 1
                        || (picked.iter().all(|p| p.2 == 0 && !p.0.window)
                            && (0..n).all(|i| (0..i).all(|j| picked[i].0.id != picked[j].0.id)));
                    assert_eq!(!std::ptr::eq(script, &*CHECK), eligible, "{ctx}: script choice");
                    if eligible {
                        small_calls += 1;
                    }
                    let (rg, rf) = (run(con, &CHECK, &g).await, run(con, script, &f).await);
                    assert_eq!(rg, rf, "{ctx}: check.lua (left) and the small script (right) on {picked:?}");
                    let reply = decode(&rg, n).unwrap();
                    if let Some(s) = reply.snapshots.iter().find(|s| !s.allowed) {
                        let retry = s.retry_after.as_nanos() as u64;
                        edge = Some(now + retry);
                        if n == 1 && !s.blocked {
                            redo = Some((picked[0].0, picked[0].1, retry));
                        }
                    } else {
                        // When the state goes idle (a window's end, a full bucket).
                        edge = Some(now + reply.snapshots[0].reset_after.as_nanos() as u64);
                    }
                    if reply.all {
                        let waits = reply.snapshots.iter().map(|s| s.wait.as_nanos() as u64).collect();
                        last = Some((picked.iter().map(|p| (p.0, p.1)).collect(), waits, reply.now));
                    }
                }
                13 | 14 => {
                    // A penalty block, up to a few seconds with sub-second nanoseconds.
                    let l = pick(&mut rng);
                    let d = Duration::from_nanos(rng.below(3 * full.min(2_000_000_000)) + rng.below(2));
                    edge = Some(now + d.as_nanos() as u64);
                    let mut c = call("b", &now_s, &general, &[(l, 1, 0)]);
                    c.args.truncate(4);
                    for a in ["g", "1", "1", "1", "1"] {
                        c.args.push(a.as_bytes().to_vec());
                    }
                    c.args.push(d.as_secs().to_string().into_bytes());
                    c.args.push(d.subsec_nanos().to_string().into_bytes());
                    let mut f = Call { keys: Vec::new(), args: c.args.clone() };
                    f.keys = call("b", &now_s, &small, &[(l, 1, 0)]).keys;
                    assert_eq!(run(con, &CHECK, &c).await, run(con, &CHECK, &f).await, "{ctx}: block");
                }
                15 | 16 => {
                    // A refund of the last committed batch (as the cross-slot path sends it,
                    // with the commit's now), on states the small scripts wrote.
                    if let Some((checks, waits, at)) = last.take() {
                        let of = |ns: &str| {
                            let picked: Vec<_> =
                                checks.iter().zip(&waits).map(|(&(l, cost), &w)| (l, cost, w)).collect();
                            call(Mode::Refund.arg(), &at, ns, &picked)
                        };
                        let (g, f) = (of(&general), of(&small));
                        assert!(std::ptr::eq(f.script(), &*CHECK));
                        assert_eq!(run(con, &CHECK, &g).await, run(con, &CHECK, &f).await, "{ctx}: refund");
                    }
                }
                _ => {
                    // The two phases of a cross-slot batch: peek, then commit at the time found.
                    let l = pick(&mut rng);
                    let wait = if rng.chance(50) { 0 } else { rng.below(full) };
                    let picked = [(l, 1, wait)];
                    let (g, f) = (call("p", &now_s, &general, &picked), call("p", &now_s, &small, &picked));
                    let (pg, pf) = (run(con, &CHECK, &g).await, run(con, &CHECK, &f).await);
                    assert_eq!(pg, pf, "{ctx}: peek");
                    let peek = decode(&pg, 1).unwrap();
                    if peek.all {
                        let go = [(l, 1, peek.snapshots[0].wait.as_nanos() as u64)];
                        let (g, f) = (call("m", &now_s, &general, &go), call("m", &now_s, &small, &go));
                        assert_eq!(run(con, &CHECK, &g).await, run(con, &CHECK, &f).await, "{ctx}: commit");
                    }
                }
            }
            let (sg, sf) = (state(con, &general, &limits).await, state(con, &small, &limits).await);
            for ((g, f), l) in sg.iter().zip(&sf).zip(&limits) {
                assert_eq!((&g.0, &g.1), (&f.0, &f.1), "{ctx}: state of limit {l:?}");
                // Both set the same TTL a moment apart (or none: no key).
                assert!((g.2 - f.2).abs() <= 1_000 || g.2.min(f.2) < 0 && g.2 == f.2, "{ctx}: TTLs {g:?} {f:?}");
            }
        }
        small_calls
    }

    /// Random sequences at clocks near zero (whole seconds of 0), across a second boundary, at
    /// today's clock and near the end of u64 nanoseconds (about 2554): the scripts keep absolute
    /// times as decimal strings, while Lua numbers are doubles.
    #[tokio::test]
    async fn small_scripts_agree_with_check_lua() {
        if !redis_available() {
            return;
        }
        let server = RedisServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let starts = [0, 999_000_000, 1_700_000_000_123_456_789, 18_000_000_000_999_999_999];
        let mut small_calls = 0;
        for seed in 1..=24u64 {
            small_calls += sequence(&mut con, seed, starts[seed as usize % starts.len()]).await;
        }
        assert!(small_calls > 2_000, "the small scripts ran {small_calls} times");
    }

    /// On the server's TIME (production: no now, no least TTL, so the small scripts get their
    /// short argument layout), a fresh key gets the same snapshots from both.
    #[tokio::test]
    async fn small_scripts_on_server_time() {
        if !redis_available() {
            return;
        }
        let server = RedisServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        // Quotas long enough that no key expires between the two calls and the reads, even on a
        // loaded machine (a 1 s emission interval let a key of cost 2 expire before the read).
        let a = Limit { id: 1, window: false, t: 60_000_000_000, burst: 5 };
        let b = Limit { id: 2, window: false, t: 180_000_000_000, burst: 2 };
        let w = Limit { id: 3, window: true, t: 60_000_000_000, burst: 10 };
        let cases = [
            (1, vec![(a, 2, 0)]),
            (1, vec![(b, 1, 5_000_000_000)]),
            (2, vec![(a, 1, 0), (b, 2, 0)]),
            (1, vec![(w, 3, 0)]),
        ];
        for (i, (n, checks)) in cases.into_iter().enumerate() {
            let production = |ns: &str| {
                let mut c = call("c", "", ns, &checks);
                c.args[2] = b"0".to_vec();
                c
            };
            // Fresh keys: their snapshots do not depend on the time between the two calls.
            let (ng, nf) = (format!("pg{i}"), format!("pf{i}"));
            let (g, f) = (production(&ng), production(&nf));
            let small = f.script();
            let expected = match (n, checks[0].0.window) {
                (1, true) => &*WINDOW,
                (1, false) => &*GCRA,
                _ => &*GCRA_BATCH,
            };
            assert!(std::ptr::eq(small, expected));
            let (rg, rf) = (run(&mut con, &CHECK, &g).await, run(&mut con, small, &f).await);
            let (rg, rf) = (decode(&rg, n).unwrap(), decode(&rf, n).unwrap());
            assert!(rg.all && rf.all);
            // A window's reset counts down to the end of the window of now, which moved on
            // between the two calls; everything else is the same.
            for (g, f) in rg.snapshots.iter().zip(&rf.snapshots) {
                assert!(g.reset_after.abs_diff(f.reset_after) < Duration::from_millis(100), "{g:?} {f:?}");
                assert_eq!(Snapshot { reset_after: f.reset_after, ..*g }, *f);
            }
            assert_eq!(rf.now.len(), 19, "now in nanoseconds: {}", rf.now);
            let (sg, sf) = (state(&mut con, &ng, &[checks[0].0]).await, state(&mut con, &nf, &[checks[0].0]).await);
            assert!(sg[0].0.is_some() && sf[0].0.is_some() && (sg[0].2 - sf[0].2).abs() <= 1_000, "{sg:?} {sf:?}");
        }
    }
}
