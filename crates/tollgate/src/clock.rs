//! Clocks. Every algorithm reads time through [`Clock`], so tests step time by hand.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of nanoseconds. Only differences between readings matter; the origin is
/// the clock's own.
///
/// A clock that goes backwards is tolerated: the algorithms treat an earlier reading as "no time
/// has passed" for state already written later, and never panic.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since this clock's origin.
    fn now(&self) -> u64;
}

/// The default clock: a fast monotonic clock (`quanta`, TSC-based where available).
#[derive(Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonotonicClock").field("now", &self.now()).finish()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        // The raw counter scaled to nanoseconds: no `Duration` or u128 on the hot path. quanta
        // saturates a delta that would go negative at zero.
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// A clock moved only by hand, for deterministic tests. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let other = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(other.now(), 1_500_000_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock at `nanos`.
    pub fn at(nanos: u64) -> Self {
        Self { nanos: Arc::new(AtomicU64::new(nanos)) }
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = crate::algorithm::nanos(by);
        let _ = self.nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(by)));
    }

    /// Sets the time, also backwards (to test clocks that jump).
    pub fn set(&self, nanos: u64) {
        self.nanos.store(nanos, Ordering::Release);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::Acquire)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now(&self) -> u64 {
        (**self).now()
    }
}
