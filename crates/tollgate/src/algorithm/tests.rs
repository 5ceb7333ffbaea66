//! Each algorithm against a simple reference model, on random sequences with a manual clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::fixed_window::FixedWindow;
use super::gcra::Gcra;
use super::sliding_log::SlidingLog;
use super::sliding_window::SlidingWindow;
use super::{Meter, Mode};
use crate::quota::Quota;

fn quota(amount: u32, period_ms: u64, burst: u32) -> Quota {
    Quota::new(amount.try_into().unwrap(), std::time::Duration::from_millis(period_ms))
        .unwrap()
        .with_burst(burst.try_into().unwrap())
}

fn ops() -> impl Strategy<Value = Vec<(u64, u32)>> {
    // (nanoseconds to advance, cost)
    prop::collection::vec((0u64..400_000_000, 1u32..4), 1..200)
}

/// A token bucket holding credit in nanoseconds: a different formulation of GCRA.
struct Bucket {
    level: u64,
    last: u64,
}

proptest! {
    #[test]
    fn gcra_matches_a_token_bucket(amount in 1u32..20, period_ms in 1u64..5_000, extra in 0u32..10, ops in ops()) {
        let q = quota(amount, period_ms, amount + extra);
        let t = q.emission_interval_nanos();
        let cap = t * u64::from(q.burst().get());
        let state = AtomicU64::new(0);
        let mut bucket = Bucket { level: cap, last: 0 };
        let mut now = 1_000_000_000_000u64;
        bucket.last = now;
        for (step, cost) in ops {
            now += step;
            if cost > q.burst().get() { continue; }
            bucket.level = (bucket.level + (now - bucket.last)).min(cap);
            bucket.last = now;
            let need = t * u64::from(cost);
            let want = bucket.level >= need;
            let snap = Gcra::apply(&state, &q, now, now, cost, 0, Mode::Commit);
            prop_assert_eq!(snap.allowed, want);
            if want {
                bucket.level -= need;
                prop_assert_eq!(snap.remaining, bucket.level / t);
            } else {
                prop_assert_eq!(snap.retry_after.as_nanos(), u128::from(need - bucket.level));
            }
        }
    }

    #[test]
    fn fixed_window_matches_per_window_counts(amount in 1u32..20, period_ms in 1u64..5_000, ops in ops()) {
        let q = quota(amount, period_ms, amount);
        let p = q.period_nanos();
        let state = Mutex::default();
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut now = 7_000_000_000u64;
        for (step, cost) in ops {
            now += step;
            if cost > amount { continue; }
            let c = counts.entry(now / p).or_default();
            let want = *c + u64::from(cost) <= u64::from(amount);
            let snap = FixedWindow::apply(&state, &q, now, now, cost, 0, Mode::Commit);
            prop_assert_eq!(snap.allowed, want);
            if want { *c += u64::from(cost); }
            prop_assert_eq!(snap.remaining, u64::from(amount) - *c);
        }
    }

    #[test]
    fn sliding_log_matches_the_full_history(amount in 1u32..20, period_ms in 1u64..5_000, ops in ops()) {
        let q = quota(amount, period_ms, amount);
        let p = q.period_nanos();
        let state = Mutex::default();
        let mut history: Vec<(u64, u64)> = Vec::new();
        let mut now = 7_000_000_000u64;
        for (step, cost) in ops {
            now += step;
            if cost > amount { continue; }
            let used: u64 = history.iter().filter(|(ts, _)| ts + p > now).map(|(_, c)| c).sum();
            let want = used + u64::from(cost) <= u64::from(amount);
            let snap = SlidingLog::apply(&state, &q, now, now, cost, 0, Mode::Commit);
            prop_assert_eq!(snap.allowed, want);
            if want { history.push((now, u64::from(cost))); }
        }
    }

    #[test]
    fn sliding_window_matches_its_formula(amount in 1u32..20, period_ms in 1u64..5_000, ops in ops()) {
        let q = quota(amount, period_ms, amount);
        let p = q.period_nanos();
        let state = Mutex::default();
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut now = 7_000_000_000u64;
        for (step, cost) in ops {
            now += step;
            if cost > amount { continue; }
            let w = now / p;
            let prev = counts.get(&(w - 1)).copied().unwrap_or(0);
            let cur = counts.get(&w).copied().unwrap_or(0);
            let e = now - w * p;
            let weighted = (u128::from(prev) * u128::from(p - e)).div_ceil(u128::from(p)) as u64;
            let want = weighted + cur + u64::from(cost) <= u64::from(amount);
            let snap = SlidingWindow::apply(&state, &q, now, now, cost, 0, Mode::Commit);
            prop_assert_eq!(snap.allowed, want, "prev {} cur {} e {}", prev, cur, e);
            if want { *counts.entry(w).or_default() += u64::from(cost); }
        }
    }

    /// With the delay action, what proceeds (at `now + wait`) never exceeds the quota either.
    #[test]
    fn delayed_admissions_stay_within_the_quota(amount in 1u32..10, period_ms in 10u64..2_000, wait_ms in 0u64..3_000, ops in ops()) {
        let q = quota(amount, period_ms, amount);
        let p = q.period_nanos();
        let max_wait = wait_ms * 1_000_000;
        let gcra = AtomicU64::new(0);
        let log = Mutex::default();
        let fixed = Mutex::default();
        let (mut g_at, mut l_at, mut f_at) = (Vec::new(), Vec::new(), Vec::new());
        let mut now = 7_000_000_000u64;
        for (step, cost) in ops {
            now += step;
            if cost > amount { continue; }
            let c = u64::from(cost);
            let s = Gcra::apply(&gcra, &q, now, now, cost, max_wait, Mode::Commit);
            if s.allowed { prop_assert!(s.wait.as_nanos() <= u128::from(max_wait)); g_at.push((now + s.wait.as_nanos() as u64, c)); }
            let s = SlidingLog::apply(&log, &q, now, now, cost, max_wait, Mode::Commit);
            if s.allowed { l_at.push((now + s.wait.as_nanos() as u64, c)); }
            let s = FixedWindow::apply(&fixed, &q, now, now, cost, max_wait, Mode::Commit);
            if s.allowed { f_at.push((now + s.wait.as_nanos() as u64, c)); }
        }
        let t = q.emission_interval_nanos();
        // GCRA: over any [a, b], admitted <= burst + (b - a) / T.
        for &(a, _) in &g_at {
            let total: u64 = g_at.iter().filter(|(x, _)| *x >= a).map(|&(x, c)| (x, c)).fold(0, |acc, (_, c)| acc + c);
            let last = g_at.iter().map(|(x, _)| *x).max().unwrap_or(a);
            prop_assert!(total <= u64::from(amount) + (last - a) / t, "gcra over-admitted");
        }
        // Sliding log: any period-long window holds at most `amount`.
        for &(x, _) in &l_at {
            let total: u64 = l_at.iter().filter(|(y, _)| *y <= x && y + p > x).map(|(_, c)| c).sum();
            prop_assert!(total <= u64::from(amount), "sliding log over-admitted");
        }
        // Fixed window: each window holds at most `amount`.
        let mut per: HashMap<u64, u64> = HashMap::new();
        for &(x, c) in &f_at { *per.entry(x / p).or_default() += c; }
        prop_assert!(per.values().all(|&v| v <= u64::from(amount)), "fixed window over-admitted");
    }

    /// A peek never changes the state; a refund undoes a commit.
    #[test]
    fn peek_is_pure_and_refund_undoes(amount in 1u32..10, period_ms in 1u64..2_000, ops in ops()) {
        let q = quota(amount, period_ms, amount);
        let a = AtomicU64::new(0);
        let b = AtomicU64::new(0);
        let mut now = 5_000_000_000u64;
        for (step, cost) in ops {
            now += step;
            if cost > amount { continue; }
            let peek = Gcra::apply(&a, &q, now, now, cost, 0, Mode::Peek);
            let commit = Gcra::apply(&a, &q, now, now, cost, 0, Mode::Commit);
            prop_assert_eq!(peek.allowed, commit.allowed);
            prop_assert_eq!(peek.remaining, commit.remaining);
            let before = Gcra::apply(&b, &q, now, now, 1, 0, Mode::Peek);
            let s = Gcra::apply(&b, &q, now, now, cost, 0, Mode::Commit);
            if s.allowed { Gcra::refund(&b, &q, now, cost, &s); }
            let after = Gcra::apply(&b, &q, now, now, 1, 0, Mode::Peek);
            prop_assert_eq!(before, after);
        }
    }
}

#[test]
fn clocks_going_backwards_never_panic() {
    let q = quota(5, 1_000, 5);
    let g = AtomicU64::new(0);
    let (f, s, l) = (Mutex::default(), Mutex::default(), Mutex::default());
    for now in [u64::MAX, 10_000_000_000, 0, 5, u64::MAX - 1, 3_000_000_000, 0] {
        let _ = Gcra::apply(&g, &q, now, now, 5, u64::MAX, Mode::Commit);
        let _ = FixedWindow::apply(&f, &q, now, now, 5, u64::MAX, Mode::Commit);
        let _ = SlidingWindow::apply(&s, &q, now, now, 5, u64::MAX, Mode::Commit);
        let _ = SlidingLog::apply(&l, &q, now, now, 5, u64::MAX, Mode::Commit);
    }
}

/// A bucket whose capacity (emission interval × burst) overflows u64 nanoseconds, e.g.
/// `1KiB/d burst 1GiB` (some 2,900 years to refill): once the burst is spent, it must refuse.
/// The saturating arithmetic took the capacity as u64::MAX and then admitted everything, forever.
#[test]
fn gcra_with_an_overflowing_bucket_still_refuses() {
    let q = Quota::new(1024.try_into().unwrap(), std::time::Duration::from_secs(86_400))
        .unwrap()
        .with_burst((1u32 << 30).try_into().unwrap());
    let state = AtomicU64::new(0);
    let now = 1_000_000_000u64;
    // Spend the bucket a MiB at a time, as fast as it lets: over the next microsecond it may
    // admit at most the burst (a bucket holds at most some 146 years of refill, so less here)
    // and, at 1 KiB a day, nothing more.
    let mut admitted = 0u64;
    for i in 0..2_000u64 {
        if Gcra::apply(&state, &q, now + i, now + i, 1 << 20, 0, Mode::Commit).allowed {
            admitted += 1 << 20;
        }
    }
    assert!(admitted > 0 && admitted <= 1 << 30, "a bucket of 1 GiB admitted {admitted} bytes at once");
    assert!(!Gcra::apply(&state, &q, now + 10_000, now + 10_000, 1 << 20, 0, Mode::Commit).allowed);
}
