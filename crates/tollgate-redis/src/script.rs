//! The Lua scripts and their protocol (documented at the top of `lua/check.lua`).
//!
//! Scripts run by `EVALSHA`; the redis crate's [`Script`] loads them and retries on `NOSCRIPT`
//! (after a restart or `SCRIPT FLUSH`). In a cluster, `SCRIPT LOAD` goes to every node.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};
use tollgate::{Algorithm, Check, Quota, Snapshot, StoreError};

use crate::error::Error;
use crate::keys::CheckKeys;
use crate::store::RedisLimit;

/// Every decision (all algorithms, peek/commit/refund) and penalty blocks.
pub(crate) static CHECK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/check.lua")));

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
        let mut args = Vec::with_capacity(4 + count * 7);
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

    pub(crate) fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k.as_slice());
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
