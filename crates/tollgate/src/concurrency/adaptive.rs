//! Adaptive concurrency limits: a cap on requests (or WebSocket connections) in flight that
//! follows what the protected service can take, measured from its latency and its failures — in
//! the manner of Netflix's `concurrency-limits` and Envoy's adaptive concurrency filter.
//!
//! A service past its capacity does not get faster by being sent more: its requests queue, and
//! latency grows with the queue (Little's law: in flight = throughput × latency). An adaptive
//! limit measures the latency of the requests it admits, window after window, and
//!
//! - **grows** while latency stays near its measured minimum and the cap is in use,
//! - **shrinks** when latency rises above it or more than a share of the requests fail (a 5xx
//!   response),
//!
//! within the bounds given. Requests over the cap are refused at once (503 with `Retry-After`, as
//! the server rather than the client is at its limit) instead of joining the queue, so the tail
//! latency of the admitted ones stays bounded.
//!
//! Two algorithms:
//!
//! - [`AdaptiveLimit::gradient`] (the one to reach for): the cap is multiplied each window by
//!   `tolerance × minimum latency / latency` (between 0.5 and 2; plus one when it grows). It
//!   settles where the service's latency is `tolerance` times its minimum — for a service of `N`
//!   workers, at about `tolerance × N`. The minimum is measured at startup and again every `probe_every`, with
//!   the cap lowered to `min` for one window (as Envoy does), so that a minimum that went stale
//!   cannot hold the cap down or let it run up for long; expect refusals during that window.
//! - [`AdaptiveLimit::aimd`]: additive increase, multiplicative decrease against a latency you
//!   name — one more each window while latency is under `latency_threshold` and the cap is in
//!   use, times `backoff` when it is over (or requests fail). Simple and predictable when the
//!   acceptable latency is known.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{AdaptiveLimit, ConcurrencyLimiter, ConcurrencyScope, Key};
//!
//! let adaptive = AdaptiveLimit::gradient().bounds(2, 200).initial(2).build()?;
//! let limiter = ConcurrencyLimiter::new("search").adaptive(adaptive.clone());
//! let mut a = limiter.try_acquire(Key::Text("alice"))?;
//! let _b = limiter.try_acquire(Key::Text("bob"))?;
//! // While the first minimum latency is measured, the cap is `min`: 2.
//! assert_eq!(limiter.try_acquire(Key::Text("carol")).unwrap_err().scope, ConcurrencyScope::Adaptive);
//! // Tell the limit how a request went when its response is ready (the middleware does this).
//! a.record(tollgate::concurrency::Outcome::Succeeded);
//! assert_eq!(adaptive.current(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The limit counts this process's requests and measures this process's latency, also on a
//! limiter whose per-key caps are [shared](super::ConcurrencyLimiter::shared) through Redis:
//! every instance adapts to what it sees.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::clock::{Clock, MonotonicClock};
use crate::error::Error;
use crate::observe::AdaptiveMetrics;

/// How an adaptive limit moves its cap (see the [module](self) docs).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum AdaptiveAlgorithm {
    /// Additive increase (`increase` per window while latency is under `latency_threshold`
    /// and the cap is in use), multiplicative decrease (times the limit's `backoff` when latency
    /// is over it, or requests fail).
    Aimd {
        /// The latency over which the cap shrinks.
        latency_threshold: Duration,
        /// How much the cap grows per window.
        increase: u32,
    },
    /// The cap follows the ratio of the minimum latency to the window's latency.
    Gradient {
        /// How much latency above the minimum is taken as normal (`1.2`: 20 % more); the cap
        /// settles where latency is this times the minimum.
        tolerance: f64,
        /// How often the minimum latency is measured again, with the cap at `min` for one
        /// window (`Duration::ZERO`: only at startup).
        probe_every: Duration,
    },
}

/// What an adaptive limit is built from; see [`AdaptiveBuilder`] for each field's meaning and
/// default.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveSettings {
    /// The algorithm and its own parameters.
    pub algorithm: AdaptiveAlgorithm,
    /// The smallest cap.
    pub min: u32,
    /// The largest cap.
    pub max: u32,
    /// The cap to start from.
    pub initial: u32,
    /// The shortest measuring window.
    pub window: Duration,
    /// The fewest latencies a window needs before the cap moves.
    pub min_samples: u32,
    /// What the cap is multiplied by when requests fail (and, with AIMD, when latency is over
    /// its threshold).
    pub backoff: f64,
    /// The share of failed requests in a window (5xx responses) above which the cap backs off.
    pub failure_ratio: f64,
}

/// Builds an [`AdaptiveLimit`]: [`AdaptiveLimit::gradient`] or [`AdaptiveLimit::aimd`], then
/// any of these, then [`AdaptiveBuilder::build`].
#[derive(Clone)]
#[must_use = "call `build()` to get the limit"]
pub struct AdaptiveBuilder {
    settings: AdaptiveSettings,
    /// Whether `initial` was given; if not, the default follows the bounds.
    initial_given: bool,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for AdaptiveBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveBuilder").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl AdaptiveBuilder {
    fn new(algorithm: AdaptiveAlgorithm) -> Self {
        Self {
            settings: AdaptiveSettings {
                algorithm,
                min: 4,
                max: 1000,
                initial: 20,
                window: Duration::from_millis(100),
                min_samples: 10,
                backoff: 0.9,
                failure_ratio: 0.05,
            },
            initial_given: false,
            clock: None,
        }
    }

    /// The cap stays within `min..=max` (default `4..=1000`). `min` is also the cap while a
    /// gradient limit measures its minimum latency: at most what the service serves without
    /// queuing.
    pub fn bounds(mut self, min: u32, max: u32) -> Self {
        self.settings.min = min;
        self.settings.max = max;
        self
    }

    /// The cap to start from (default 20, or the nearest bound when 20 is outside them).
    pub fn initial(mut self, n: u32) -> Self {
        self.settings.initial = n;
        self.initial_given = true;
        self
    }

    /// The shortest measuring window (default 100 ms): the cap moves at most once per window,
    /// and only once the window has [`Self::min_samples`] latencies.
    pub fn window(mut self, window: Duration) -> Self {
        self.settings.window = window;
        self
    }

    /// The fewest latencies a window needs before the cap moves (default 10; at most 100,000).
    pub fn min_samples(mut self, n: u32) -> Self {
        self.settings.min_samples = n;
        self
    }

    /// What the cap is multiplied by when more than [`Self::failure_ratio`] of a window's
    /// requests fail, and with AIMD when latency is over its threshold (default 0.9; between 0
    /// and 1).
    pub fn backoff(mut self, factor: f64) -> Self {
        self.settings.backoff = factor;
        self
    }

    /// The share of a window's requests that may fail (5xx) before the cap backs off (default
    /// 0.05; between 0 and 1).
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.settings.failure_ratio = ratio;
        self
    }

    /// Gradient: how much latency above the minimum is normal (default 1.2; at least 1).
    /// Ignored by AIMD.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        if let AdaptiveAlgorithm::Gradient { tolerance: t, .. } = &mut self.settings.algorithm {
            *t = tolerance;
        }
        self
    }

    /// Gradient: how often the minimum latency is measured again (default 60 s; zero: only at
    /// startup; else at least 10 windows). A probe lowers the cap to `min` for one window with
    /// [`Self::min_samples`] latencies, and at most 10 windows, 20 latencies or a second,
    /// whichever is longest (places held long, such as WebSocket connections, can keep `min`
    /// busy: the probe then keeps the minimum it had).
    /// Ignored by AIMD.
    pub fn probe_every(mut self, every: Duration) -> Self {
        if let AdaptiveAlgorithm::Gradient { probe_every, .. } = &mut self.settings.algorithm {
            *probe_every = every;
        }
        self
    }

    /// AIMD: how much the cap grows per window (default 1). Ignored by the gradient.
    pub fn increase(mut self, n: u32) -> Self {
        if let AdaptiveAlgorithm::Aimd { increase, .. } = &mut self.settings.algorithm {
            *increase = n;
        }
        self
    }

    /// Reads time from `clock` (default: a [`MonotonicClock`]); a
    /// [`ManualClock`](crate::ManualClock) makes tests deterministic.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The settings so far.
    pub fn settings(&self) -> &AdaptiveSettings {
        &self.settings
    }

    /// The limit, or an error naming the setting out of range.
    pub fn build(self) -> Result<AdaptiveLimit, Error> {
        let mut s = self.settings;
        if !self.initial_given {
            s.initial = s.initial.clamp(s.min, s.max.max(s.min));
        }
        let field = |name: &str| format!("adaptive.{name}");
        if s.min == 0 {
            return Err(Error::config(field("min"), s.min, "must be at least 1"));
        }
        if s.max < s.min {
            let default = if s.max == 1000 { "; 1000 is the default" } else { "" };
            return Err(Error::config(field("max"), s.max, format!("must be at least min ({}){default}", s.min)));
        }
        if !(s.min..=s.max).contains(&s.initial) {
            return Err(Error::config(field("initial"), s.initial, format!("must be within {}..={}", s.min, s.max)));
        }
        if s.window.is_zero() {
            return Err(Error::config(field("window"), format!("{:?}", s.window), "must be longer than zero"));
        }
        if !(1..=MIN_SAMPLES_BOUND).contains(&s.min_samples) {
            return Err(Error::config(
                field("min_samples"),
                s.min_samples,
                format!("must be within 1..={MIN_SAMPLES_BOUND}"),
            ));
        }
        if !(s.backoff > 0.0 && s.backoff < 1.0) {
            return Err(Error::config(field("backoff"), s.backoff, "must be between 0 and 1 (exclusive)"));
        }
        if !(0.0..=1.0).contains(&s.failure_ratio) {
            return Err(Error::config(field("failure_ratio"), s.failure_ratio, "must be between 0 and 1"));
        }
        match s.algorithm {
            AdaptiveAlgorithm::Gradient { tolerance, .. } if !(1.0..=100.0).contains(&tolerance) => {
                return Err(Error::config(field("tolerance"), tolerance, "must be between 1 and 100"));
            }
            AdaptiveAlgorithm::Gradient { probe_every, .. }
                if !probe_every.is_zero() && probe_every < s.window.saturating_mul(PROBE_WINDOWS as u32) =>
            {
                return Err(Error::config(
                    field("probe_every"),
                    format!("{probe_every:?}"),
                    format!(
                        "must be 0 (only at startup) or at least {PROBE_WINDOWS} windows ({:?}): each probe lowers the cap to min",
                        s.window.saturating_mul(PROBE_WINDOWS as u32)
                    ),
                ));
            }
            AdaptiveAlgorithm::Aimd { latency_threshold, .. } if latency_threshold.is_zero() => {
                return Err(Error::config(
                    field("latency_threshold"),
                    format!("{latency_threshold:?}"),
                    "must be longer than zero",
                ));
            }
            AdaptiveAlgorithm::Aimd { increase: 0, .. } => {
                return Err(Error::config(field("increase"), 0, "must be at least 1"));
            }
            _ => {}
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        Ok(AdaptiveLimit { state: Arc::new(State::new(s, clock, None)) })
    }
}

/// A concurrency cap that adapts to the service's latency and failures (see the [module](self)
/// docs). Give it to a [`ConcurrencyLimiter`](super::ConcurrencyLimiter) with
/// [`adaptive`](super::ConcurrencyLimiter::adaptive). Cheap to clone; clones are one limit.
#[derive(Clone)]
pub struct AdaptiveLimit {
    state: Arc<State>,
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("settings", &self.state.settings)
            .field("current", &self.current())
            .field("latency", &self.latency())
            .field("min_latency", &self.min_latency())
            .finish()
    }
}

/// How a request under an adaptive limit went, told to its lease with
/// [`ConnectionLease::record`](super::ConnectionLease::record) when its response is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The service answered (any status below 500).
    Succeeded,
    /// The service failed (a 5xx, a timeout).
    Failed,
}

impl Outcome {
    /// `Failed` for a 5xx status, else `Succeeded`.
    pub fn of(status: http::StatusCode) -> Self {
        if status.is_server_error() { Outcome::Failed } else { Outcome::Succeeded }
    }
}

impl AdaptiveLimit {
    /// A gradient limit (see the [module](self) docs): tolerance 1.2, a new minimum latency
    /// every 60 s.
    pub fn gradient() -> AdaptiveBuilder {
        AdaptiveBuilder::new(AdaptiveAlgorithm::Gradient { tolerance: 1.2, probe_every: Duration::from_secs(60) })
    }

    /// An AIMD limit that backs off when a window's mean latency is over `latency_threshold`.
    pub fn aimd(latency_threshold: Duration) -> AdaptiveBuilder {
        AdaptiveBuilder::new(AdaptiveAlgorithm::Aimd { latency_threshold, increase: 1 })
    }

    /// The cap now.
    #[inline]
    pub fn current(&self) -> u32 {
        self.state.limit.load(Ordering::Relaxed)
    }

    /// The mean latency of the last window, once one closed.
    pub fn latency(&self) -> Option<Duration> {
        nanos(self.state.latency.load(Ordering::Relaxed))
    }

    /// The minimum latency the gradient measured (`None` with AIMD, or before the first
    /// measurement).
    pub fn min_latency(&self) -> Option<Duration> {
        nanos(self.state.baseline.load(Ordering::Relaxed))
    }

    /// What it was built from.
    pub fn settings(&self) -> &AdaptiveSettings {
        &self.state.settings
    }

    /// This limit carrying on from `previous` (a reload of the configuration): `previous`
    /// itself when the settings are the same; else a limit of the new settings starting from
    /// `previous`'s cap (within the new bounds) and minimum latency, so that a reload neither
    /// forgets what was learned nor lowers the cap to measure again.
    #[must_use]
    pub fn continuing(&self, previous: &AdaptiveLimit) -> AdaptiveLimit {
        if self.state.settings == previous.state.settings {
            return previous.clone();
        }
        let learned = previous.state.learned();
        AdaptiveLimit { state: Arc::new(State::new(self.state.settings, Arc::clone(&self.state.clock), learned)) }
    }

    /// Whether `self` and `other` are one limit.
    pub fn same(&self, other: &AdaptiveLimit) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Names the limit for its metrics (the limiter's name; the first name given stays).
    pub(crate) fn name(&self, name: &'static str) {
        let _ = self.state.name.set(name);
    }

    /// A request was admitted, `in_use` now held (itself included); returns its sample.
    #[inline]
    pub(crate) fn admitted(&self, in_use: usize) -> LatencySample {
        self.state.peak.fetch_max(u32::try_from(in_use).unwrap_or(u32::MAX), Ordering::Relaxed);
        LatencySample { limit: self.clone(), started: self.state.clock.now() }
    }

    /// A request was refused with `held` places in use (the cap was in use).
    #[cold]
    pub(crate) fn refused(&self, held: usize) {
        self.state.refused(held);
    }
}

fn nanos(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_nanos(n))
}

/// When a request under an adaptive limit started, to be recorded once its response is ready.
pub(crate) struct LatencySample {
    limit: AdaptiveLimit,
    started: u64,
}

impl fmt::Debug for LatencySample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencySample").field("started", &self.started).finish_non_exhaustive()
    }
}

impl LatencySample {
    /// The request waited `wait` before the application was called (the delay action): its
    /// latency counts from then.
    pub(crate) fn delayed(&mut self, wait: Duration) {
        self.started = self.started.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The response is ready: its latency and outcome count in the window.
    pub(crate) fn record(self, outcome: Outcome) {
        self.limit.state.record(self.started, outcome == Outcome::Failed);
    }
}

/// What a limit learned, carried into a new one on reload.
#[derive(Clone, Copy)]
struct Learned {
    limit: u32,
    baseline: u64,
    latency: u64,
}

/// A window's latencies, packed in one word so that one atomic addition counts a latency and
/// adds it to the sum, and one swap takes both: a latency never lands in one window and its
/// count in the next. The count in the high bits, the sum in microseconds in the low ones.
const SUM_BITS: u32 = 44;
const ONE_SAMPLE: u64 = 1 << SUM_BITS;
/// The longest latency a sample adds (about 16.8 s; a longer one counts as that, far over any
/// threshold), and the most samples a window takes before it closes whatever its time: together
/// they keep the sum under its 44 bits.
const MAX_SAMPLE_US: u64 = (1 << 24) - 1;
const MAX_SAMPLES: u64 = 1 << 19;
/// The most a window may be asked to wait for (the `min_samples` bound), under `MAX_SAMPLES`.
const MIN_SAMPLES_BOUND: u32 = 100_000;
/// A probe of the minimum latency ends after this many windows (see `probe_span`) even without
/// `min_samples` latencies (places held long — WebSocket connections, streamed bodies — can keep
/// the cap at `min` busy), keeping the minimum it had unless the probe measured some.
const PROBE_WINDOWS: u64 = 10;

/// The limit's state: the cap and the window's sums in atomics (recorded by every response,
/// no lock), the decisions between windows behind a mutex only the closer of a window takes.
struct State {
    settings: AdaptiveSettings,
    clock: Arc<dyn Clock>,
    name: OnceLock<&'static str>,
    limit: AtomicU32,
    /// The window: when it began, its latencies (count and sum, packed), its failures, and the
    /// most held at once during it.
    began: AtomicU64,
    samples: AtomicU64,
    failed: AtomicU32,
    peak: AtomicU32,
    /// Requests started before this do not count (a probe of the minimum latency began after).
    epoch: AtomicU64,
    /// When a probe running now ends at the latest (`u64::MAX`: none running).
    probe_until: AtomicU64,
    /// The last window's mean latency, and the minimum (gradient), in nanoseconds; 0: none yet.
    latency: AtomicU64,
    baseline: AtomicU64,
    control: Mutex<Control>,
    metrics: AdaptiveMetrics,
}

struct Control {
    /// Measuring the minimum latency with the cap at `min`: the cap to go back to.
    probing: Option<u32>,
    /// When the next probe is due (gradient).
    next_probe: u64,
}

impl State {
    fn new(settings: AdaptiveSettings, clock: Arc<dyn Clock>, learned: Option<Learned>) -> Self {
        let now = clock.now();
        let clamp = |n: u32| n.clamp(settings.min, settings.max);
        let (limit, baseline, latency) = match learned {
            Some(l) => (clamp(l.limit), l.baseline, l.latency),
            None => (settings.initial, 0, 0),
        };
        let (limit, probing, next_probe) = match settings.algorithm {
            // The minimum is measured first, at `min`, unless a previous limit measured it.
            AdaptiveAlgorithm::Gradient { .. } if baseline == 0 => (settings.min, Some(limit), now),
            AdaptiveAlgorithm::Gradient { probe_every, .. } => (limit, None, next_probe(probe_every, now)),
            AdaptiveAlgorithm::Aimd { .. } => (limit, None, u64::MAX),
        };
        let probe_until = if probing.is_some() { now.saturating_add(probe_span(&settings, latency)) } else { u64::MAX };
        Self {
            settings,
            clock,
            name: OnceLock::new(),
            limit: AtomicU32::new(limit),
            began: AtomicU64::new(now),
            samples: AtomicU64::new(0),
            failed: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
            probe_until: AtomicU64::new(probe_until),
            latency: AtomicU64::new(latency),
            baseline: AtomicU64::new(match settings.algorithm {
                AdaptiveAlgorithm::Gradient { .. } => baseline,
                AdaptiveAlgorithm::Aimd { .. } => 0,
            }),
            control: Mutex::new(Control { probing, next_probe }),
            metrics: AdaptiveMetrics::default(),
        }
    }

    /// What a reload carries into a limit of other settings: the cap to go back to when a probe
    /// is running (not `min`), the minimum and the last latency; nothing before the first probe
    /// measured a minimum (the new limit measures it).
    fn learned(&self) -> Option<Learned> {
        let control = self.control.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let baseline = self.baseline.load(Ordering::Relaxed);
        let measured = baseline > 0 || matches!(self.settings.algorithm, AdaptiveAlgorithm::Aimd { .. });
        measured.then(|| Learned {
            limit: control.probing.unwrap_or_else(|| self.limit.load(Ordering::Acquire)),
            baseline,
            latency: self.latency.load(Ordering::Relaxed),
        })
    }

    fn record(&self, started: u64, failed: bool) {
        if started < self.epoch.load(Ordering::Acquire) {
            return;
        }
        let now = self.clock.now();
        let micros = (now.saturating_sub(started) / 1_000).min(MAX_SAMPLE_US);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let packed = self.samples.fetch_add(ONE_SAMPLE | micros, Ordering::AcqRel) + (ONE_SAMPLE | micros);
        let count = packed >> SUM_BITS;
        let due = now.saturating_sub(self.began.load(Ordering::Acquire)) >= self.window_nanos()
            && count >= u64::from(self.settings.min_samples);
        if due || count >= MAX_SAMPLES || now >= self.probe_until.load(Ordering::Acquire) {
            self.close_window(now);
        }
    }

    /// A lease was refused with `held` places in use: the cap was in use; and a probe past its
    /// deadline ends here if no response ends it (every place held long).
    fn refused(&self, held: usize) {
        self.peak.fetch_max(u32::try_from(held).unwrap_or(u32::MAX), Ordering::Relaxed);
        let until = self.probe_until.load(Ordering::Acquire);
        if until != u64::MAX {
            let now = self.clock.now();
            if now >= until {
                self.close_window(now);
            }
        }
    }

    fn window_nanos(&self) -> u64 {
        u64::try_from(self.settings.window.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Moves the cap on the window's latencies; one thread at a time (the others go on).
    #[cold]
    fn close_window(&self, now: u64) {
        let Ok(mut control) = self.control.try_lock() else { return };
        let packed = self.samples.load(Ordering::Acquire);
        let overdue_probe = control.probing.is_some() && now >= self.probe_until.load(Ordering::Acquire);
        let due = now.saturating_sub(self.began.load(Ordering::Acquire)) >= self.window_nanos()
            && packed >> SUM_BITS >= u64::from(self.settings.min_samples);
        if !due && !overdue_probe && packed >> SUM_BITS < MAX_SAMPLES {
            return; // another thread closed it
        }
        let packed = self.samples.swap(0, Ordering::AcqRel);
        let (count, sum_us) = (packed >> SUM_BITS, packed & (ONE_SAMPLE - 1));
        let failed = self.failed.swap(0, Ordering::AcqRel);
        let peak = self.peak.swap(0, Ordering::AcqRel);
        self.began.store(now, Ordering::Release);
        let mean = (sum_us.saturating_mul(1_000) / count.max(1)).max(1);
        if count > 0 {
            self.latency.store(mean, Ordering::Relaxed);
        }

        let s = &self.settings;
        let limit = self.limit.load(Ordering::Acquire);
        let failing = count > 0 && failed as f64 > s.failure_ratio * count as f64;
        let backed_off = || ((f64::from(limit) * s.backoff) as u32).min(limit.saturating_sub(1));
        // Grown only while the cap is in use: a cap twice what is ever held says nothing of
        // what the service could take.
        let in_use = peak.saturating_mul(2) >= limit;
        let next = match s.algorithm {
            AdaptiveAlgorithm::Aimd { latency_threshold, increase } => {
                if failing || Duration::from_nanos(mean) > latency_threshold {
                    backed_off()
                } else if in_use {
                    limit.saturating_add(increase)
                } else {
                    limit
                }
            }
            AdaptiveAlgorithm::Gradient { tolerance, probe_every } => {
                let baseline = self.baseline.load(Ordering::Relaxed);
                if let Some(restore) = control.probing.take() {
                    // The probe's window: requests at `min` in flight, the service unqueued. A
                    // probe that saw nothing (its deadline passed) or saw the service fail keeps
                    // the minimum it had.
                    if count > 0 && !failing {
                        self.baseline.store(mean, Ordering::Relaxed);
                    }
                    self.probe_until.store(u64::MAX, Ordering::Release);
                    control.next_probe = next_probe(probe_every, now);
                    restore
                } else if now >= control.next_probe {
                    control.probing = Some(limit);
                    self.epoch.store(now, Ordering::Release);
                    let span = probe_span(s, self.latency.load(Ordering::Relaxed));
                    self.probe_until.store(now.saturating_add(span), Ordering::Release);
                    s.min
                } else if failing {
                    backed_off()
                } else {
                    let baseline = if baseline == 0 || mean < baseline {
                        self.baseline.store(mean, Ordering::Relaxed);
                        mean
                    } else {
                        baseline
                    };
                    let mut gradient = (tolerance * baseline as f64 / mean as f64).clamp(0.5, 2.0);
                    if !in_use {
                        gradient = gradient.min(1.0);
                    }
                    // One more while latency is near the minimum, so that a small cap grows;
                    // none when it shrinks, so that it settles where the gradient is 1.
                    let headroom = if in_use && gradient >= 1.0 { 1.0 } else { 0.0 };
                    (f64::from(limit) * gradient + headroom) as u32
                }
            }
        };
        let next = next.clamp(s.min, s.max);
        self.limit.store(next, Ordering::Release);
        if next != limit {
            tracing::debug!(
                limiter = self.name.get().copied().unwrap_or(""),
                from = limit,
                to = next,
                latency_ms = mean as f64 / 1e6,
                min_latency_ms = self.baseline.load(Ordering::Relaxed) as f64 / 1e6,
                failed,
                samples = count,
                probing = control.probing.is_some(),
                "adaptive concurrency limit moved"
            );
        }
        self.metrics.window(self.name.get().copied().unwrap_or(""), next, mean, self.baseline.load(Ordering::Relaxed));
    }
}

/// How long a probe may last at most: `PROBE_WINDOWS` windows, and long enough for 20 requests
/// of the last latency measured (`latency`, nanoseconds) one after another, and a second.
fn probe_span(settings: &AdaptiveSettings, latency: u64) -> u64 {
    let windows = u64::try_from(settings.window.as_nanos()).unwrap_or(u64::MAX).saturating_mul(PROBE_WINDOWS);
    windows.max(latency.saturating_mul(20)).max(1_000_000_000)
}

/// When the probe after one at `now` is due: `every` later, plus up to 1/8 more so that instances
/// started together do not all probe at once; never for `every` zero (only the startup probe).
fn next_probe(every: Duration, now: u64) -> u64 {
    if every.is_zero() {
        return u64::MAX;
    }
    let every = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
    let spread = every / 8;
    let mixed = now.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    now.saturating_add(every).saturating_add(if spread == 0 { 0 } else { mixed % spread })
}

#[cfg(test)]
mod tests;
