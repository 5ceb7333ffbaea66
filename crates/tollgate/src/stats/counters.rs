//! The counts a snapshot reads, kept as decisions are made.
//!
//! The allow path pays one relaxed increment of a counter in a cache line of its thread's own
//! ([`DecisionCounters`]): no lock, no clock, no allocation, and no line that every core writes
//! (one shared counter per policy would bounce between cores under load). The refusal path adds
//! a per-limit count and the key to a bounded table of heavy hitters ([`Refusals`]), allocated at
//! a policy's first refusal. Rates are the snapshot taker's business: it diffs these cumulative
//! counts (see [`Sampler`](super::Sampler)).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::top::{KeyId, TopKeys};
use crate::decision::Reason;
use crate::key::Key;

/// Stripes of counters per policy: threads are spread over them, so that few share a line.
const STRIPES: usize = 8;

/// Counter slots of a stripe: one per [`Reason`] (at its [`Reason::index`]), then the delayed
/// admissions, then the store failures.
const SLOTS: usize = Reason::COUNT + 2;

/// The slot of admissions that waited (the delay action).
const DELAYED: usize = Reason::COUNT;

/// The slot of store failures (whatever the failure mode made of them).
const STORE_FAILURES: usize = Reason::COUNT + 1;

/// One thread's counters, alone in its cache lines (128 bytes: two lines, as the adjacent-line
/// prefetcher of x86 pulls pairs).
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    counts: [AtomicU64; SLOTS],
}

thread_local! {
    /// This thread's stripe, given out round-robin at its first decision.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The next stripe to give out.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
fn stripe() -> usize {
    let stripe = STRIPE.with(Cell::get);
    if stripe != usize::MAX { stripe } else { assign_stripe() }
}

#[cold]
fn assign_stripe() -> usize {
    let stripe = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
    STRIPE.with(|s| s.set(stripe));
    stripe
}

/// A policy's decisions so far, by reason, with the delayed ones and the store failures.
#[derive(Default)]
pub(crate) struct DecisionCounters {
    stripes: [Stripe; STRIPES],
}

impl DecisionCounters {
    #[inline(always)]
    fn add(&self, slot: usize) {
        // The mask keeps the index in bounds without a check.
        self.stripes[stripe() & (STRIPES - 1)].counts[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A decision for `reason`, which made the request wait `delayed`.
    #[inline(always)]
    pub(crate) fn decision(&self, reason: Reason, delayed: bool) {
        self.add(reason.index());
        if delayed {
            self.add(DELAYED);
        }
    }

    /// A store failure (the failure mode decided).
    pub(crate) fn store_failure(&self) {
        self.add(STORE_FAILURES);
    }

    /// The sums over the stripes.
    pub(crate) fn read(&self) -> DecisionCounts {
        let mut sums = [0u64; SLOTS];
        for stripe in &self.stripes {
            for (sum, count) in sums.iter_mut().zip(&stripe.counts) {
                *sum = sum.wrapping_add(count.load(Ordering::Relaxed));
            }
        }
        let at = |reason: Reason| sums[reason.index()];
        DecisionCounts {
            allowed: at(Reason::Allowed),
            allow_listed: at(Reason::AllowListed),
            failed_open: at(Reason::StoreUnavailableFailedOpen),
            delayed: sums[DELAYED],
            rate_limited: at(Reason::RateLimited),
            blocked: at(Reason::Blocked),
            denied: at(Reason::DenyListed),
            key_missing: at(Reason::KeyMissing),
            store_unavailable: at(Reason::StoreUnavailable),
            key_table_full: at(Reason::KeyTableFull),
            store_failures: sums[STORE_FAILURES],
        }
    }
}

/// What [`DecisionCounters::read`] found.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DecisionCounts {
    pub(crate) allowed: u64,
    pub(crate) allow_listed: u64,
    pub(crate) failed_open: u64,
    pub(crate) delayed: u64,
    pub(crate) rate_limited: u64,
    pub(crate) blocked: u64,
    pub(crate) denied: u64,
    pub(crate) key_missing: u64,
    pub(crate) store_unavailable: u64,
    pub(crate) key_table_full: u64,
    pub(crate) store_failures: u64,
}

/// The refusal reasons a limit is named for: [`Reason::RateLimited`], [`Reason::Blocked`],
/// [`Reason::KeyTableFull`].
const LIMIT_REASONS: usize = 3;

fn limit_reason(reason: Reason) -> Option<usize> {
    match reason {
        Reason::RateLimited => Some(0),
        Reason::Blocked => Some(1),
        Reason::KeyTableFull => Some(2),
        _ => None,
    }
}

/// A policy's refusals by limit, and its most refused keys: allocated at its first refusal, so
/// that a policy that never refuses holds none of it.
#[derive(Default)]
pub(crate) struct Refusals {
    table: OnceLock<Box<RefusalTable>>,
}

struct RefusalTable {
    /// By the limit's index in its policy (at most [`MAX_LIMITS`](crate::policy::MAX_LIMITS)),
    /// then by [`limit_reason`].
    by_limit: [[AtomicU64; LIMIT_REASONS]; crate::policy::MAX_LIMITS],
    /// Striped as the counters are, each behind its own lock, merged when read.
    top: [Mutex<TopKeys>; TOP_STRIPES],
}

/// Heavy-hitter tables per policy: threads refusing at once mostly take different locks.
const TOP_STRIPES: usize = 4;

impl Refusals {
    fn table(&self) -> &RefusalTable {
        self.table.get_or_init(|| {
            Box::new(RefusalTable {
                by_limit: Default::default(),
                top: std::array::from_fn(|_| Mutex::new(TopKeys::default())),
            })
        })
    }

    /// A refusal for `reason`, by the limit at `limit` in its policy when one refused, of `key`.
    pub(crate) fn refused(&self, limit: Option<usize>, reason: Reason, key: Key<'_>) {
        self.record(limit, limit.and(limit_reason(reason)), reason.as_str(), key);
    }

    /// A refusal labelled `reason` of `key`, by the limit at `limit`, counted in its slot
    /// `counted` (see [`Refusals::of_limit`]) when given.
    fn record(&self, limit: Option<usize>, counted: Option<usize>, reason: &'static str, key: Key<'_>) {
        let table = self.table();
        if let (Some(i), Some(r)) = (limit, counted)
            && let Some(counts) = table.by_limit.get(i)
        {
            counts[r].fetch_add(1, Ordering::Relaxed);
        }
        let id = KeyId::of(key, limit, reason);
        let stripe = stripe() % TOP_STRIPES;
        table.top[stripe].lock().unwrap_or_else(PoisonError::into_inner).record(id);
    }

    /// The refusals of the limit at `limit`: rate limited, blocked, key table full.
    pub(crate) fn of_limit(&self, limit: usize) -> [u64; LIMIT_REASONS] {
        let Some(table) = self.table.get() else { return [0; LIMIT_REASONS] };
        table.by_limit.get(limit).map_or([0; LIMIT_REASONS], |c| c.each_ref().map(|c| c.load(Ordering::Relaxed)))
    }

    /// The most refused keys, merged over the stripes: each with its estimated count (an upper
    /// bound) and the most it may be over.
    pub(crate) fn top(&self) -> Vec<(KeyId, u64, u64)> {
        let Some(table) = self.table.get() else { return Vec::new() };
        let tables: Vec<TopKeys> =
            table.top.iter().map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).clone()).collect();
        TopKeys::merge(&tables)
    }
}

/// The engine's refusals of concurrency leases, by limiter, with their keys: the limiters are
/// numbered in the order they first refused, as a policy's limits are by their place in it.
#[derive(Default)]
pub(crate) struct LeaseRefusals {
    limiters: Mutex<Vec<&'static str>>,
    refusals: Refusals,
}

impl LeaseRefusals {
    /// A lease of the limiter `name` refused to `key` for `reason` (`per_key`, `global`,
    /// `store_unavailable`).
    pub(crate) fn refused(&self, name: &'static str, reason: &'static str, key: Key<'_>) {
        let index = {
            let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
            limiters.iter().position(|n| *n == name).unwrap_or_else(|| {
                limiters.push(name);
                limiters.len() - 1
            })
        };
        self.refusals.record(Some(index), Some(0), reason, key);
    }

    /// The limiters that refused, each with its number.
    pub(crate) fn limiters(&self) -> Vec<&'static str> {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The refusals of the limiter `name`.
    pub(crate) fn of(&self, name: &str) -> u64 {
        let index = self.limiters().iter().position(|n| *n == name);
        index.map_or(0, |i| self.refusals.of_limit(i)[0])
    }

    /// The most refused keys (see [`Refusals::top`]).
    pub(crate) fn top(&self) -> Vec<(KeyId, u64, u64)> {
        self.refusals.top()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_over_threads() {
        let counters = std::sync::Arc::new(DecisionCounters::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let counters = std::sync::Arc::clone(&counters);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        counters.decision(Reason::Allowed, i % 10 == 0);
                        counters.decision(Reason::RateLimited, false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| panic!("a counting thread panicked"));
        }
        let read = counters.read();
        assert_eq!((read.allowed, read.delayed, read.rate_limited), (6000, 600, 6000));
    }
}
