//! Sliding log: every admitted check is logged with its time and cost; a check passes when the
//! cost logged in the last period plus its own fits the amount. Exact over every period-long
//! interval. Delayed checks are logged at the future time they may proceed.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Meter, Mode, Snapshot, d, lock};
use crate::quota::Quota;

#[derive(Debug)]
pub(crate) struct SlidingLog;

/// One key's log, sorted by time.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    entries: VecDeque<(u64, u64)>,
    sum: u64,
    /// When the last entry leaves the window.
    idle_at: u64,
}

impl LogState {
    fn prune(&mut self, now: u64, period: u64) {
        while let Some(&(ts, c)) = self.entries.front() {
            if ts.saturating_add(period) <= now {
                self.entries.pop_front();
                self.sum -= c;
            } else {
                break;
            }
        }
    }

    /// The earliest time `>= at` at which `cost` more fits, given the log as it is. Every entry
    /// still in the log by then counts, later (delayed) ones included.
    fn earliest(&self, at: u64, period: u64, n: u64, c: u64) -> u64 {
        let mut sum = self.sum;
        for &(ts, ec) in &self.entries {
            let gone = ts.saturating_add(period);
            if gone > at && sum + c <= n {
                return at;
            }
            sum -= ec;
            if sum + c <= n {
                return gone.max(at);
            }
        }
        at // the empty log fits
    }

    fn insert(&mut self, ts: u64, c: u64) {
        let at = self.entries.partition_point(|&(t, _)| t <= ts);
        self.entries.insert(at, (ts, c));
        self.sum += c;
    }
}

impl Meter for SlidingLog {
    type State = Mutex<LogState>;

    fn apply(
        state: &Mutex<LogState>,
        quota: &Quota,
        now: u64,
        at: u64,
        cost: u32,
        max_wait: u64,
        mode: Mode,
    ) -> Snapshot {
        let period = quota.period_nanos();
        let n = u64::from(quota.amount().get());
        let c = u64::from(cost);
        let mut s = lock(state);
        s.prune(now, period);
        let at = s.earliest(at.max(now), period, n, c);
        let wait = at - now;
        let last = s.entries.back().map_or(0, |&(ts, _)| ts);
        if wait <= max_wait {
            if mode == Mode::Commit {
                s.insert(at, c);
                s.idle_at = s.idle_at.max(at.saturating_add(period));
            }
            let used = s.sum + if mode == Mode::Peek { c } else { 0 };
            let last = last.max(at);
            Snapshot {
                allowed: true,
                blocked: false,
                limit: n,
                remaining: n.saturating_sub(used),
                reset_after: d(last.saturating_add(period).saturating_sub(now)),
                retry_after: d(0),
                wait: d(wait),
            }
        } else {
            Snapshot {
                allowed: false,
                blocked: false,
                limit: n,
                remaining: n.saturating_sub(s.sum),
                reset_after: d(last.saturating_add(period).saturating_sub(now)),
                retry_after: d(wait),
                wait: d(0),
            }
        }
    }

    fn refund(state: &Mutex<LogState>, _quota: &Quota, now: u64, cost: u32, snapshot: &Snapshot) {
        let mut s = lock(state);
        let ts = now.saturating_add(super::nanos(snapshot.wait));
        let c = u64::from(cost);
        if let Some(i) = s.entries.iter().rposition(|&e| e == (ts, c)) {
            s.entries.remove(i);
            s.sum -= c;
        }
    }

    fn is_idle(state: &Mutex<LogState>, now: u64) -> bool {
        lock(state).idle_at <= now
    }
}
