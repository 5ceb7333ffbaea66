//! Fixed window: a counter per window aligned to multiples of the period, plus what the delay
//! action has reserved in the next window.

use std::sync::Mutex;

use super::{Meter, Mode, Snapshot, d, lock};
use crate::quota::Quota;

#[derive(Debug)]
pub(crate) struct FixedWindow;

/// One key's windows.
#[derive(Debug, Default)]
pub(crate) struct FixedState {
    /// End of the current window (0: never used).
    end: u64,
    count: u64,
    /// Reserved in the window after `end` by delayed checks.
    next: u64,
}

impl FixedState {
    fn roll(&mut self, now: u64, period: u64) {
        if now < self.end {
            return; // Same window, or the clock went back: keep counting in this window.
        }
        let end = (now / period).saturating_add(1).saturating_mul(period);
        self.count = if self.end != 0 && now < self.end.saturating_add(period) { self.next } else { 0 };
        self.next = 0;
        self.end = end;
    }
}

impl Meter for FixedWindow {
    type State = Mutex<FixedState>;

    fn apply(
        state: &Mutex<FixedState>,
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
        s.roll(now, period);
        let at = at.max(now);
        let to_end = s.end.saturating_sub(now);
        // A check told to go later than the next window cannot be counted here: refused.
        let next_fits = s.next + c <= n && at < s.end.saturating_add(period);
        let go_next = at.max(s.end) - now;
        let reset_after = if s.next > 0 { to_end.saturating_add(period) } else { to_end };
        let mut snap = Snapshot {
            allowed: true,
            blocked: false,
            limit: n,
            remaining: 0,
            reset_after: d(reset_after),
            retry_after: d(0),
            wait: d(0),
        };
        if at < s.end && s.count + c <= n && at - now <= max_wait {
            if mode == Mode::Commit {
                s.count += c;
            }
            snap.remaining = n - s.count - if mode == Mode::Peek { c } else { 0 };
            snap.wait = d(at - now);
        } else if next_fits && go_next <= max_wait {
            if mode == Mode::Commit {
                s.next += c;
            }
            snap.wait = d(go_next);
            snap.reset_after = d(to_end.saturating_add(period));
        } else {
            snap.allowed = false;
            snap.remaining = n.saturating_sub(s.count);
            let retry = if next_fits { go_next } else { to_end.saturating_add(period).max(at - now) };
            snap.retry_after = d(retry.max(1));
        }
        snap
    }

    // The in-memory store refunds at once, after its commits with the clock reading it took
    // before them: when another check moved the state on in between, the commit counted in the
    // state's window, which is where this refunds (the Redis store refunds a round trip later,
    // and finds the window from the commit's own time instead: see its `check.lua`).
    fn refund(state: &Mutex<FixedState>, quota: &Quota, now: u64, cost: u32, snapshot: &Snapshot) {
        let mut s = lock(state);
        s.roll(now, quota.period_nanos());
        let c = u64::from(cost);
        if now.saturating_add(super::nanos(snapshot.wait)) < s.end {
            s.count = s.count.saturating_sub(c);
        } else {
            s.next = s.next.saturating_sub(c);
        }
    }

    fn is_idle(state: &Mutex<FixedState>, now: u64) -> bool {
        let s = lock(state);
        s.next == 0 && now >= s.end
    }
}
