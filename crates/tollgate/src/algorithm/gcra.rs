//! GCRA: a token bucket kept as a "theoretical arrival time" (TAT) per key.
//!
//! With `T` the time to replenish one unit and capacity `b` (the burst), a check of cost `c` at
//! `now` passes when `max(tat, now) + c·T <= now + b·T`, and then sets `tat` to the left side.
//! The key is idle (a full bucket) once `tat <= now`.
//!
//! A check may be told to proceed no earlier than a time `at >= now` (a request that another limit
//! of its policy delays): it is then decided as if it arrived at `at`, so the bucket sees it when
//! it really goes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Meter, Mode, Snapshot, d};
use crate::quota::Quota;

/// The GCRA meter; its state is one atomic timestamp, updated by compare-and-swap.
#[derive(Debug)]
pub(crate) struct Gcra;

/// The longest a bucket takes to refill from empty, in nanoseconds (some 146 years, as the
/// longest period a [`Quota`] takes): a larger capacity (emission interval × burst) would
/// overflow the timestamps, and is taken as this one. Quotas read from text are refused above it.
pub(crate) const MAX_BUCKET_NANOS: u64 = u64::MAX / 4;

/// The arithmetic of one decision, shared by the meter, the WebSocket gate and the tests'
/// reference checks: `cost` at `now`, proceeding no earlier than `at` (`now` unless another limit
/// delays the request), waiting at most `max_wait` past `now`.
#[inline]
pub(crate) fn decide(tat: u64, quota: &Quota, now: u64, at: u64, cost: u32, max_wait: u64) -> (Snapshot, Option<u64>) {
    let t = quota.emission_interval_nanos();
    let burst = u64::from(quota.burst().get());
    let cap = t.saturating_mul(burst).min(MAX_BUCKET_NANOS);
    let at = at.max(now);
    let base = tat.max(at);
    let new_tat = base.saturating_add(t.saturating_mul(u64::from(cost)));
    // When it may go: once the bucket has room, and not before `at`. Then `tat <= allow_at` or
    // `base == at`, so `new_tat` is what a check arriving at `allow_at` would leave.
    let allow_at = new_tat.saturating_sub(cap).max(at);
    let limit = burst;
    if allow_at - now <= max_wait {
        let wait = allow_at - now;
        let remaining = (now.saturating_add(cap).saturating_sub(new_tat)) / t;
        let snap = Snapshot {
            allowed: true,
            blocked: false,
            limit,
            remaining,
            reset_after: d(new_tat - now),
            retry_after: d(0),
            wait: d(wait),
        };
        (snap, Some(new_tat))
    } else {
        let remaining = (now.saturating_add(cap).saturating_sub(tat.max(now))) / t;
        let snap = Snapshot {
            allowed: false,
            blocked: false,
            limit,
            remaining,
            reset_after: d(tat.max(now) - now),
            retry_after: d(allow_at - now),
            wait: d(0),
        };
        (snap, None)
    }
}

impl Meter for Gcra {
    type State = AtomicU64;

    #[inline]
    fn apply(state: &AtomicU64, quota: &Quota, now: u64, at: u64, cost: u32, max_wait: u64, mode: Mode) -> Snapshot {
        let mut tat = state.load(Ordering::Acquire);
        loop {
            let (snap, new_tat) = decide(tat, quota, now, at, cost, max_wait);
            let Some(new_tat) = new_tat else { return snap };
            if mode == Mode::Peek {
                return snap;
            }
            match state.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return snap,
                Err(actual) => tat = actual,
            }
        }
    }

    fn refund(state: &AtomicU64, quota: &Quota, _now: u64, cost: u32, _snapshot: &Snapshot) {
        let back = quota.emission_interval_nanos().saturating_mul(u64::from(cost));
        let _ = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(tat.saturating_sub(back)));
    }

    #[inline]
    fn is_idle(state: &AtomicU64, now: u64) -> bool {
        state.load(Ordering::Acquire) <= now
    }
}
