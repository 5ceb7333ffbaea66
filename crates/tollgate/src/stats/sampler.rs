//! Rates from cumulative counts: the snapshot taker diffs, the decisions never time anything.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Snapshot;

/// Takes a snapshot whenever asked and gives it its rates per second since an earlier one;
/// shared by everyone watching (every open dashboard, every `GET /stats`). The rates are over
/// at least [`Sampler::min_interval`]: a snapshot asked for sooner than that after the last
/// one that set the rates has its rates over the time since the one before that, not over a
/// sliver of time. Its counts are always fresh. Nothing runs between requests.
///
/// ```
/// use std::time::{Duration, Instant};
/// use tollgate::engine::{Engine, Limits};
/// use tollgate::stats::Sampler;
///
/// let engine = Engine::new(Limits::new());
/// let sampler = Sampler::new(move || engine.stats());
/// let start = Instant::now();
/// assert_eq!(sampler.sample_at(start).snapshot().interval_ms, None, "nothing to diff with yet");
/// let later = sampler.sample_at(start + Duration::from_secs(2));
/// assert_eq!(later.snapshot().interval_ms, Some(2000));
/// assert!(later.sse_event().starts_with("event: stats\ndata: {"));
/// ```
pub struct Sampler {
    source: Box<dyn Fn() -> Snapshot + Send + Sync>,
    min_interval: Duration,
    /// The last two samples the rates were set from, the older first.
    bases: Mutex<(Option<Base>, Option<Base>)>,
}

/// A snapshot the rates of later ones are computed from, and when it was taken.
type Base = (Instant, Arc<Snapshot>);

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler").field("min_interval", &self.min_interval).finish_non_exhaustive()
    }
}

/// A snapshot with its rates, and its JSON rendered once for every watcher.
#[derive(Clone, Debug)]
pub struct Sample {
    snapshot: Arc<Snapshot>,
    json: Arc<str>,
}

impl Sample {
    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The snapshot as JSON ([`Snapshot::to_json`]).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The snapshot as one server-sent event (`event: stats`, the JSON as its data), as the
    /// dashboard reads it.
    pub fn sse_event(&self) -> String {
        format!("event: stats\ndata: {}\n\n", self.json)
    }
}

impl Sampler {
    /// Samples what `source` returns (e.g. `move || engine.stats()`).
    pub fn new(source: impl Fn() -> Snapshot + Send + Sync + 'static) -> Self {
        Self { source: Box::new(source), min_interval: Duration::from_millis(500), bases: Mutex::new((None, None)) }
    }

    /// The shortest time rates are computed over (default 500 ms, so that a dashboard
    /// refreshing each second has rates over the second since its last sample).
    #[must_use]
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// A sample now.
    pub fn sample(&self) -> Sample {
        self.sample_at(Instant::now())
    }

    /// A sample at `now` (for tests: a later `now` than the last sample's makes the rates over
    /// the time between).
    pub fn sample_at(&self, now: Instant) -> Sample {
        let mut bases = self.bases.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = (self.source)();
        let since = |base: &Base| now.saturating_duration_since(base.0);
        let (older, last) = &mut *bases;
        let Some(last_base) = last.as_ref() else {
            let snapshot = Arc::new(fresh);
            *last = Some((now, Arc::clone(&snapshot)));
            return Sample::of(snapshot);
        };
        if since(last_base) >= self.min_interval {
            let snapshot = Arc::new(fresh.with_rates_since(&last_base.1, since(last_base)));
            *older = last.replace((now, Arc::clone(&snapshot)));
            return Sample::of(snapshot);
        }
        // Too soon after the last base for rates of their own: over the time since the one before.
        let base = older.as_ref().unwrap_or(last_base);
        Sample::of(Arc::new(fresh.with_rates_since(&base.1, since(base))))
    }
}

impl Sample {
    fn of(snapshot: Arc<Snapshot>) -> Self {
        let json = snapshot.to_json().into();
        Sample { snapshot, json }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::engine::{Engine, Limits};
    use crate::{KeyKind, Limit, Policy, RequestKeys};

    #[test]
    fn counts_are_fresh_and_rates_span_at_least_the_minimum() {
        let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse().unwrap()).key(KeyKind::ip()));
        let policy = policy.build().unwrap();
        let engine = Engine::new(Limits::new().policy(policy.clone()));
        let sampler = Sampler::new(move || engine.stats());
        let keys = RequestKeys { ip: "192.0.2.1".parse().ok(), ..RequestKeys::default() };
        let refuse = |n| (0..n).for_each(|_| drop(policy.try_check_now(&keys, 1)));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let refused = |s: &Sample| (s.snapshot().totals.refused, s.snapshot().interval_ms);

        assert_eq!(refused(&sampler.sample_at(t0)), (0, None));
        refuse(3); // 1 allowed, 2 refused
        assert_eq!(refused(&sampler.sample_at(at(100))), (2, Some(100)), "fresh counts, however soon");
        let second = sampler.sample_at(at(1000));
        assert_eq!(refused(&second), (2, Some(1000)));
        assert_eq!(second.snapshot().totals.per_second.unwrap().refused, 2.0);
        refuse(1);
        let soon = sampler.sample_at(at(1200));
        assert_eq!(refused(&soon), (3, Some(1200)), "rates over the base before the last");
        assert_eq!(refused(&sampler.sample_at(at(2000))), (3, Some(1000)));
    }
}
