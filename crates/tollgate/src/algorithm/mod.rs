//! The algorithms. Each is a pure function over one key's state: the stores only hold the state
//! and call these, so the arithmetic lives in one place (the Redis store mirrors it in Lua and
//! proves the match with the store conformance suite).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quota::Quota;

pub(crate) mod fixed_window;
pub(crate) mod gcra;
pub(crate) mod sliding_log;
pub(crate) mod sliding_window;

/// How a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: a token bucket (capacity = burst, refilled at the quota's
    /// rate) kept as one timestamp per key. Smooth, exact, and the cheapest. The default.
    #[default]
    Gcra,
    /// Sliding-window counter: this window's count plus the previous window's, weighted by how
    /// much of it still overlaps the sliding period. Two counters per key.
    ///
    /// It is an approximation: it assumes the previous window's traffic was spread evenly. When it
    /// was bunched at the end of that window, a period straddling the boundary may admit more
    /// than `amount` (at most `2 × amount` in the adversarial case); when bunched at the start, less.
    /// Use [`Algorithm::SlidingLog`] where exactness matters more than memory.
    SlidingWindow,
    /// Sliding log: one timestamp per admitted unit of cost. Exact over every period-long interval;
    /// memory grows with the quota's amount.
    SlidingLog,
    /// Fixed window aligned to multiples of the period. One counter per key; a client may spend
    /// `amount` at the end of one window and `amount` again at the start of the next.
    FixedWindow,
}

impl Algorithm {
    /// The name used in configuration and by stores (`gcra`, `sliding_window`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// What happens when a check exceeds its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnExceed {
    /// Refuse at once. The default.
    #[default]
    Reject,
    /// Admit later: reserve the earliest capacity within `max_wait` and tell the caller how long to
    /// wait before proceeding (as nginx `limit_req` without `nodelay`); refuse when that would be
    /// longer than `max_wait`.
    ///
    /// In a policy of several limits, the request goes at the earliest time every limit has room
    /// for it, and every limit counts it at that time, so each keeps its quota exactly over any
    /// interval of the times requests really proceed. A limit that rejects (no wait of its own)
    /// still lets a request another limit delays through, as long as it has room at the time
    /// the request goes; each limit refuses only a wait it would add beyond its own `max_wait`.
    Delay {
        /// The longest wait the caller accepts.
        max_wait: Duration,
    },
}

/// One key's standing against one limit, after a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Whether the check passed (possibly after `wait`).
    pub allowed: bool,
    /// Whether an active penalty block refused it.
    pub blocked: bool,
    /// The capacity: the burst for GCRA, the amount for window algorithms.
    pub limit: u64,
    /// What is left now, after this check's cost when it passed.
    pub remaining: u64,
    /// How long until the key is back to full capacity.
    pub reset_after: Duration,
    /// When refused: how long until the same check could pass. Zero when allowed.
    pub retry_after: Duration,
    /// When allowed with the delay action: how long the caller must wait first. Usually zero.
    pub wait: Duration,
}

impl Snapshot {
    /// A placeholder, overwritten by a store's check.
    pub const EMPTY: Snapshot = Snapshot {
        allowed: true,
        blocked: false,
        limit: 0,
        remaining: 0,
        reset_after: Duration::ZERO,
        retry_after: Duration::ZERO,
        wait: Duration::ZERO,
    };

    /// The share of capacity left, for choosing the limit to report among several.
    pub(crate) fn headroom(&self) -> f64 {
        if self.limit == 0 { 0.0 } else { self.remaining as f64 / self.limit as f64 }
    }
}

/// Whether a check writes what it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Decide only (for all-or-nothing checks across several limits).
    Peek,
    /// Decide and, when allowed, consume.
    Commit,
}

/// The interface every algorithm implements over its per-key state. `apply` is atomic for one
/// key; `refund` undoes a committed `apply` of the same cost (all-or-nothing across limits).
pub(crate) trait Meter: Send + Sync + 'static {
    type State: Default + Send + Sync + 'static;

    /// Checks `cost` at `now` for a check that proceeds no earlier than `at` (`at >= now`; `now`
    /// unless another limit delays it), waiting at most `max_wait` nanoseconds past `now` (0:
    /// reject at once). When allowed, it proceeds at `now + wait` and is counted at that time.
    /// Expects `cost <= capacity` (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn apply(state: &Self::State, quota: &Quota, now: u64, at: u64, cost: u32, max_wait: u64, mode: Mode) -> Snapshot;

    /// Gives back a committed `apply` of `cost` that was allowed.
    fn refund(state: &Self::State, quota: &Quota, now: u64, cost: u32, snapshot: &Snapshot);

    /// Whether the state is as good as new at `now`, so the key can be forgotten.
    fn is_idle(state: &Self::State, now: u64) -> bool;
}

/// The largest cost a check of `quota` with `algorithm` can ever pass.
pub fn capacity(algorithm: Algorithm, quota: &Quota) -> u64 {
    match algorithm {
        Algorithm::Gcra => u64::from(quota.burst().get()),
        _ => u64::from(quota.amount().get()),
    }
}

#[inline]
pub(crate) fn d(n: u64) -> Duration {
    Duration::from_nanos(n)
}

/// [`d`] the other way: `duration` in nanoseconds, `u64::MAX` for any longer (some 584 years).
#[inline]
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Locks a mutex, taking over the state of a holder that panicked: every state update here
/// finishes before it can panic, so a poisoned state is still consistent.
#[inline]
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
