//! Sliding-window counter: the estimate at `t` is `ceil(prev · (P − e) / P) + cur`, with `e` the
//! time elapsed in the current window (aligned to multiples of the period `P`), `prev` and `cur`
//! the counts of the previous and current windows. Rounding up keeps the estimate on the safe
//! side. Delayed checks are counted in the window in which they may proceed.

use std::sync::Mutex;

use super::{Meter, Mode, Snapshot, d, lock};
use crate::quota::Quota;

#[derive(Debug)]
pub(crate) struct SlidingWindow;

/// One key's counters.
#[derive(Debug, Default)]
pub(crate) struct WindowState {
    start: u64,
    prev: u64,
    cur: u64,
    /// Reserved in the next window by delayed checks.
    next: u64,
    idle_at: u64,
}

fn weighted(prev: u64, elapsed: u64, period: u64) -> u64 {
    let x = u128::from(prev) * u128::from(period.saturating_sub(elapsed));
    u64::try_from(x.div_ceil(u128::from(period))).unwrap_or(u64::MAX)
}

/// Smallest elapsed time `e` in a window at which `ceil(prev·(P−e)/P) <= room`.
fn elapsed_for_room(prev: u64, room: u64, period: u64) -> u64 {
    if prev <= room {
        return 0;
    }
    let fit = u128::from(room) * u128::from(period) / u128::from(prev);
    period - u64::try_from(fit).unwrap_or(period)
}

impl WindowState {
    fn roll(&mut self, now: u64, period: u64) {
        let w = now / period * period;
        if w <= self.start {
            return; // Same window, or the clock went back.
        }
        if w == self.start.saturating_add(period) && (self.cur | self.next | self.prev) != 0 {
            self.prev = self.cur;
            self.cur = self.next;
        } else if w == self.start.saturating_add(period.saturating_mul(2)) {
            self.prev = self.next;
            self.cur = 0;
        } else {
            self.prev = 0;
            self.cur = 0;
        }
        self.next = 0;
        self.start = w;
    }
}

impl Meter for SlidingWindow {
    type State = Mutex<WindowState>;

    fn apply(
        state: &Mutex<WindowState>,
        quota: &Quota,
        now: u64,
        at: u64,
        cost: u32,
        max_wait: u64,
        mode: Mode,
    ) -> Snapshot {
        let p = quota.period_nanos();
        let n = u64::from(quota.amount().get());
        let c = u64::from(cost);
        let mut s = lock(state);
        s.roll(now, p);
        let e_now = now.saturating_sub(s.start).min(p - 1);
        let used = weighted(s.prev, e_now, p) + s.cur;
        // Not before `at` (another limit of the policy delays the check), nor before now.
        let e_at = at.max(now).saturating_sub(s.start);
        // Earliest time the check fits: this window, else the next one.
        let at_cur = if s.cur + c <= n && e_at < p {
            let e = elapsed_for_room(s.prev, n - s.cur - c, p).max(e_now).max(e_at);
            if e < p { Some(s.start.saturating_add(e)) } else { None }
        } else {
            None
        };
        let (at, in_next, feasible) = match at_cur {
            Some(at) => (at, false, true),
            None => {
                let room = n.saturating_sub(s.next + c);
                let e = if s.next + c <= n { elapsed_for_room(s.cur, room, p) } else { p };
                // No room before the next window ends (`e == p`: the current window's count would
                // still weigh on its last instant), or told to go later than that: this state
                // cannot count it in the window it would go in, so it is refused.
                let feasible = e < p && e_at < p.saturating_mul(2);
                let at = s.start.saturating_add(p).saturating_add(e).max(s.start.saturating_add(e_at));
                (at, true, feasible)
            }
        };
        let wait = at.saturating_sub(now);
        let allowed = wait <= max_wait && feasible;
        if allowed && mode == Mode::Commit {
            if in_next {
                s.next += c;
            } else {
                s.cur += c;
            }
            let span = if s.next > 0 { 3 } else { 2 };
            s.idle_at = s.start.saturating_add(p.saturating_mul(span));
        }
        let reset_at = if s.next > 0 || (allowed && in_next) {
            s.start.saturating_add(p.saturating_mul(3))
        } else if s.cur > 0 || (allowed && mode == Mode::Peek) {
            s.start.saturating_add(p.saturating_mul(2))
        } else if s.prev > 0 {
            s.start.saturating_add(p)
        } else {
            now
        };
        let spent = if allowed && !in_next { c } else { 0 };
        Snapshot {
            allowed,
            blocked: false,
            limit: n,
            remaining: n.saturating_sub(used + spent),
            reset_after: d(reset_at.saturating_sub(now)),
            retry_after: d(if allowed { 0 } else { wait.max(1) }),
            wait: d(if allowed { wait } else { 0 }),
        }
    }

    // As the fixed window's: the state's window, where an immediate refund finds the commit.
    fn refund(state: &Mutex<WindowState>, quota: &Quota, now: u64, cost: u32, snapshot: &Snapshot) {
        let mut s = lock(state);
        s.roll(now, quota.period_nanos());
        let c = u64::from(cost);
        let wait = super::nanos(snapshot.wait);
        if now.saturating_add(wait) >= s.start.saturating_add(quota.period_nanos()) {
            s.next = s.next.saturating_sub(c);
        } else {
            s.cur = s.cur.saturating_sub(c);
        }
    }

    fn is_idle(state: &Mutex<WindowState>, now: u64) -> bool {
        lock(state).idle_at <= now
    }
}
