//! Stand-alone GCRA limiters for use without a policy: one state ([`DirectLimiter`]) or one per
//! key ([`KeyedLimiter`]). The hot path is a clock read, a hash lookup under a shard read lock
//! and one compare-and-swap: no allocation for a key already tracked.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::algorithm::Meter;
use crate::algorithm::gcra::Gcra;
use crate::clock::{Clock, MonotonicClock};
use crate::error::Error;
use crate::quota::Quota;
use crate::store::DEFAULT_MAX_KEYS;
use crate::store::table::{Full, KeyLookup, Table};

/// A refusal: when the same check could pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotUntil {
    /// How long until the check could pass.
    pub retry_after: Duration,
}

/// The precomputed constants of a quota.
#[derive(Clone, Copy, Debug)]
struct Gcra1 {
    t: u64,
    cap: u64,
    burst: u32,
}

impl Gcra1 {
    fn new(quota: &Quota) -> Self {
        let t = quota.emission_interval_nanos();
        Self { t, cap: t.saturating_mul(u64::from(quota.burst().get())), burst: quota.burst().get() }
    }

    #[inline(always)]
    fn check(&self, state: &AtomicU64, now: u64, cost: u32) -> Result<(), NotUntil> {
        let inc = self.t.saturating_mul(u64::from(cost));
        let mut tat = state.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(inc);
            let allow_at = new_tat.saturating_sub(self.cap);
            if allow_at > now {
                return Err(NotUntil { retry_after: Duration::from_nanos(allow_at - now) });
            }
            match state.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    fn cost(&self, cost: u32) -> Result<(), Error> {
        if cost == 0 || cost > self.burst {
            Err(Error::InvalidCost { cost, capacity: u64::from(self.burst) })
        } else {
            Ok(())
        }
    }
}

/// One GCRA state: a single limit shared by all callers.
///
/// ```
/// use std::num::NonZeroU32;
/// use tollgate::{DirectLimiter, ManualClock, Quota};
///
/// let clock = ManualClock::new();
/// let limiter = DirectLimiter::with_clock(Quota::per_second(NonZeroU32::new(2).unwrap()), clock.clone());
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// assert_eq!(limiter.check().unwrap_err().retry_after.as_millis(), 500);
/// ```
pub struct DirectLimiter<C: Clock = MonotonicClock> {
    state: AtomicU64,
    gcra: Gcra1,
    clock: C,
}

impl<C: Clock> fmt::Debug for DirectLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectLimiter").field("gcra", &self.gcra).finish_non_exhaustive()
    }
}

impl DirectLimiter {
    /// A limiter on the default clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, MonotonicClock::new())
    }
}

impl<C: Clock> DirectLimiter<C> {
    /// A limiter on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self { state: AtomicU64::new(0), gcra: Gcra1::new(&quota), clock }
    }

    /// Spends one unit.
    #[inline]
    pub fn check(&self) -> Result<(), NotUntil> {
        self.gcra.check(&self.state, self.clock.now(), 1)
    }

    /// Spends `cost` units at once; a cost of 0 or above the burst is an error (it could never pass).
    pub fn check_n(&self, cost: u32) -> Result<Result<(), NotUntil>, Error> {
        self.gcra.cost(cost)?;
        Ok(self.gcra.check(&self.state, self.clock.now(), cost))
    }
}

/// A GCRA state per key, in a sharded table with idle keys evicted and a cap on keys (new keys
/// over the cap are refused for a second; see [`crate::OnFull`]).
///
/// Keys are any `Hash + Eq + Clone` type; `String` keys are checked by `&str` without allocating.
///
/// ```
/// use std::num::NonZeroU32;
/// use tollgate::{KeyedLimiter, ManualClock, Quota};
///
/// let limiter = KeyedLimiter::<String, _>::with_clock(Quota::per_minute(NonZeroU32::new(1).unwrap()), ManualClock::new());
/// assert!(limiter.check("alice").is_ok());
/// assert!(limiter.check("alice").is_err());
/// assert!(limiter.check("bob").is_ok());
/// ```
pub struct KeyedLimiter<K, C: Clock = MonotonicClock> {
    table: Table<K, AtomicU64>,
    gcra: Gcra1,
    clock: C,
}

impl<K, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter").field("gcra", &self.gcra).field("table", &self.table).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// A limiter on the default clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, MonotonicClock::new())
    }
}

impl<K: Hash + Eq, C: Clock> KeyedLimiter<K, C> {
    /// A limiter on `clock`, with the default key cap.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self::with_capacity(quota, clock, DEFAULT_MAX_KEYS)
    }

    /// A limiter on `clock` tracking at most `max_keys` keys.
    pub fn with_capacity(quota: Quota, clock: C, max_keys: usize) -> Self {
        let shards = std::thread::available_parallelism().map_or(4, usize::from) * 4;
        Self { table: Table::new(shards, max_keys), gcra: Gcra1::new(&quota), clock }
    }

    /// Spends one unit of `key`.
    #[inline]
    pub fn check<Q: KeyLookup<K> + ?Sized>(&self, key: &Q) -> Result<(), NotUntil> {
        let now = self.clock.now();
        let gcra = &self.gcra;
        self.table
            .with(key, now, Gcra::is_idle, |s| gcra.check(s, now, 1))
            .unwrap_or(Err(NotUntil { retry_after: Duration::from_secs(1) }))
    }

    /// Spends `cost` units of `key`; a cost of 0 or above the burst is an error.
    pub fn check_n<Q: KeyLookup<K> + ?Sized>(&self, key: &Q, cost: u32) -> Result<Result<(), NotUntil>, Error> {
        self.gcra.cost(cost)?;
        let now = self.clock.now();
        let gcra = &self.gcra;
        Ok(self
            .table
            .with(key, now, Gcra::is_idle, |s| gcra.check(s, now, cost))
            .unwrap_or_else(|Full| Err(NotUntil { retry_after: Duration::from_secs(1) })))
    }

    /// How many keys are tracked (idle ones not yet swept included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets idle keys now (this also happens by itself as the table grows). The first key of
    /// each shard is kept for good, so that checking it takes no lock.
    pub fn sweep(&self) {
        self.table.sweep(self.clock.now(), Gcra::is_idle);
    }
}
