//! Rates from cumulative counts: the snapshot taker diffs, the decisions never time anything.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Snapshot;

/// Takes snapshots when asked and gives each its rates per second since the one before; shared
/// by everyone watching (every open dashboard, every `GET /stats`), so that a snapshot asked for
/// again within [`Sampler::min_interval`] is the last one, not a new one over a sliver of time.
/// Nothing runs between requests.
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
    last: Mutex<Option<Sample>>,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler").field("min_interval", &self.min_interval).finish_non_exhaustive()
    }
}

/// A snapshot with its rates, and its JSON rendered once for every watcher.
#[derive(Clone, Debug)]
pub struct Sample {
    taken: Instant,
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
        Self { source: Box::new(source), min_interval: Duration::from_millis(500), last: Mutex::new(None) }
    }

    /// A sample asked for sooner than this after the last one is the last one (default 500 ms,
    /// so that a dashboard refreshing each second always gets a new one).
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
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = last.as_ref()
            && now.saturating_duration_since(previous.taken) < self.min_interval
        {
            return previous.clone();
        }
        let fresh = (self.source)();
        let snapshot = match last.as_ref() {
            Some(previous) => fresh.with_rates_since(&previous.snapshot, now.saturating_duration_since(previous.taken)),
            None => fresh,
        };
        let json = snapshot.to_json().into();
        let sample = Sample { taken: now, snapshot: Arc::new(snapshot), json };
        *last = Some(sample.clone());
        sample
    }
}
