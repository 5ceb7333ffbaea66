//! See the limiter at work: a snapshot of what it decided, who it refused and why, what is held
//! open and how its stores are — cheap to take, and free when nobody asks.
//!
//! [`Engine::stats`](crate::engine::Engine::stats) (or [`Policy::stats`](crate::Policy::stats)
//! for one policy) reads counts the decisions keep anyway: one relaxed increment on a counter of
//! the deciding thread's own per decision, nothing else on the allow path; a refusal also counts
//! against its limit and puts its key in a bounded table of the most refused keys (a space-saving
//! table of 64 keys per stripe, each key kept in at most 64 bytes, longer ones as their digest,
//! so that a flood of distinct or huge keys cannot grow it). Nothing runs between snapshots: no
//! timer, no thread. Rates per second come from the [`Sampler`], which diffs a snapshot with the
//! one before.
//!
//! [`Snapshot::to_json`] renders the snapshot in the versioned schema below, which
//! [`dashboard::HTML`] (a self-contained live page) reads from a stream of
//! [server-sent events](Sample::sse_event); [`StatsAccess`] says who may see them (loopback
//! clients, or the holders of a token: never the world by default). The demos serve the three
//! as `GET /stats`, `GET /stats/events` and `GET /dashboard`, outside the rate limits.
//!
//! ```
//! use tollgate::engine::{Engine, Limits};
//! use tollgate::stats::Sampler;
//! use tollgate::{KeyKind, Limit, Policy};
//!
//! let per_ip = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
//! let keys = tollgate::RequestKeys { ip: Some("203.0.113.9".parse()?), ..Default::default() };
//! assert!(per_ip.try_check_now(&keys, 1).unwrap()?.allowed);
//! assert!(!per_ip.try_check_now(&keys, 1).unwrap()?.allowed);
//!
//! let engine = Engine::new(Limits::new().policy(per_ip));
//! let snapshot = engine.stats();
//! assert_eq!((snapshot.totals.allowed, snapshot.totals.refused), (1, 1));
//! assert_eq!(snapshot.top_refused[0].key, "203.0.113.9");
//! assert_eq!(snapshot.top_refused[0].limit.as_deref(), Some("per_ip"));
//!
//! // Rates: a sampler diffs each snapshot with the one before.
//! let sampler = Sampler::new(move || engine.stats());
//! let json = sampler.sample().json().to_owned();
//! assert!(json.starts_with(r#"{"schema_version":1,"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # JSON schema, version 1
//!
//! Counts are cumulative since the policy (or engine) was built; `per_second` fields are over
//! the `interval_ms` before the snapshot, and `null` in a snapshot with no earlier one to diff
//! with. Fields may be added within a version; a field removed or changed in meaning raises
//! `schema_version`.
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "taken_at_unix_ms": 1767225600000,
//!   "interval_ms": 1000,                          // or null
//!   "totals": { "allowed": 120, "delayed": 0, "refused": 37,
//!               "per_second": { "allowed": 5.0, "delayed": 0.0, "refused": 12.0 } },
//!   "policies": [ {
//!     "name": "per_ip", "routes": ["/api/hello"],
//!     "failure_mode": "open",                     // open | closed | fallback
//!     "dry_run": false,
//!     "allowed": 120, "delayed": 0, "refused": 37, // allowed counts allow-listed and failed-open
//!     "reasons": { "allowed": 118, "allow_listed": 0, "store_unavailable_failed_open": 2,
//!                  "rate_limited": 30, "blocked": 5, "denied": 0, "key_missing": 0,
//!                  "store_unavailable": 0, "key_table_full": 2 },
//!     "store_failures": 2,                        // store errors, whatever the failure mode made of them
//!     "per_second": { "allowed": 5.0, "delayed": 0.0, "refused": 12.0 },
//!     "limits": [ { "name": "per_ip", "quota": "5/s burst 10", "key": "ip", "algorithm": "gcra",
//!                   "refused": 37, "reasons": { "rate_limited": 30, "blocked": 5, "key_table_full": 2 },
//!                   "refused_per_second": 12.0, "tracked_keys": 42 } ],   // tracked_keys: null if the store cannot tell
//!     "store": { ...store... }
//!   } ],
//!   "leases": [ { "name": "ws", "kind": "websocket", "routes": ["/ws"],   // kind: in_flight | websocket
//!                 "in_use": 3, "refused": 1, "refused_per_second": 0.0,
//!                 "adaptive": { "algorithm": "gradient", "limit": 24,     // only for an adaptive limit
//!                               "latency_ms": 21.5, "min_latency_ms": 18.2 } } ],  // null until measured
//!   "store": { "kind": "redis", "state": "unavailable",  // the worst of the policies' stores; null without policies
//!              "breaker": "open",                        // open | closed; null for a store without one
//!              "detail": "...", "counters": { "near_cache_hits": 8 } },
//!   "top_refused": [ { "key": "203.0.113.9", "policy": "per_ip", "limit": "per_ip",  // limit null when none refused
//!                      "reason": "rate_limited", "count": 30, "error": 0, "per_second": 12.0 } ]
//! }
//! ```
//!
//! `state` is `ok`, `degraded` or `unavailable`. A top key's `count` is at least its true count
//! and at most `error` more; `reason` is the last it was refused for (a policy's reasons, or
//! `concurrency_per_key`, `concurrency_global`, `concurrency_store_unavailable`,
//! `concurrency_adaptive` for a lease a
//! concurrency limit refused, its `policy` then the limiter's name). Keys are shown as their
//! [`Key`](crate::Key)'s `Display`: an address, text, escaped bytes, or `sha256:...` for a key
//! longer than 64 bytes.

pub(crate) mod counters;
pub(crate) mod top;

mod access;
pub mod dashboard;
mod sampler;

pub use access::StatsAccess;
pub use sampler::{Sample, Sampler};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The version of the JSON schema [`Snapshot::to_json`] writes (see the [module docs](self)).
pub const SCHEMA_VERSION: u32 = 1;

/// The most refused keys a snapshot lists.
pub const TOP_KEYS: usize = 20;

/// What the limiter did and holds at one moment: see the [module docs](self) for the meaning of
/// each field.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// The time the `per_second` rates are over, once a [`Sampler`] has diffed it.
    pub interval_ms: Option<u64>,
    /// The sums over the policies.
    pub totals: Totals,
    /// Each policy, once (however many routes share it).
    pub policies: Vec<PolicyStats>,
    /// Each concurrency limiter: in-flight requests and WebSocket connections.
    pub leases: Vec<LeaseStats>,
    /// The worst of the policies' stores.
    pub store: Option<StoreHealth>,
    /// The most refused keys, most refused first (at most [`TOP_KEYS`]).
    pub top_refused: Vec<TopKey>,
}

/// Decisions summed over every policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Admitted (delayed ones, allow-listed and failed-open ones included).
    pub allowed: u64,
    /// Admitted after a wait (the delay action).
    pub delayed: u64,
    /// Refused, for any reason (in dry-run: would have been).
    pub refused: u64,
    /// Per second over the sampler's interval.
    pub per_second: Option<Rates>,
}

/// Decisions per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Rates {
    /// Admitted.
    pub allowed: f64,
    /// Admitted after a wait.
    pub delayed: f64,
    /// Refused.
    pub refused: f64,
}

/// One policy's decisions.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PolicyStats {
    /// Its name.
    pub name: String,
    /// The routes of the engine it applies to (request policy or body bytes).
    pub routes: Vec<String>,
    /// What a store failure makes of a decision: `open`, `closed`, `fallback`.
    pub failure_mode: &'static str,
    /// Whether it only reports what it would refuse.
    pub dry_run: bool,
    /// Admitted, allow-listed and failed-open included.
    pub allowed: u64,
    /// Admitted after a wait.
    pub delayed: u64,
    /// Refused (in dry-run: would have been).
    pub refused: u64,
    /// Every decision by its [`Reason`](crate::Reason).
    pub reasons: Reasons,
    /// Store errors, whatever the failure mode decided.
    pub store_failures: u64,
    /// Per second over the sampler's interval.
    pub per_second: Option<Rates>,
    /// Its limits, in order.
    pub limits: Vec<LimitStats>,
    /// Its store.
    pub store: StoreHealth,
}

/// A policy's decisions by [`Reason`](crate::Reason) (named as [`Reason::as_str`](crate::Reason::as_str) names them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[allow(missing_docs)] // Each is the reason of the same name.
pub struct Reasons {
    pub allowed: u64,
    pub allow_listed: u64,
    pub store_unavailable_failed_open: u64,
    pub rate_limited: u64,
    pub blocked: u64,
    pub denied: u64,
    pub key_missing: u64,
    pub store_unavailable: u64,
    pub key_table_full: u64,
}

impl Reasons {
    /// The admissions.
    pub fn allowed(&self) -> u64 {
        self.allowed + self.allow_listed + self.store_unavailable_failed_open
    }

    /// The refusals.
    pub fn refused(&self) -> u64 {
        self.rate_limited + self.blocked + self.denied + self.key_missing + self.store_unavailable + self.key_table_full
    }
}

/// One limit of a policy.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct LimitStats {
    /// Its name.
    pub name: String,
    /// Its quota (`5/s burst 10`; tiers and per-key quotas not shown).
    pub quota: String,
    /// What it counts by: `global`, `ip`, `identity`, `route`, `custom`, `header:<name>`.
    pub key: String,
    /// Its algorithm: `gcra`, `sliding_window`, `sliding_log`, `fixed_window`.
    pub algorithm: &'static str,
    /// Requests it refused.
    pub refused: u64,
    /// Of those, why.
    pub reasons: LimitReasons,
    /// Refused per second over the sampler's interval.
    pub refused_per_second: Option<f64>,
    /// The keys its store tracks, when the store can tell.
    pub tracked_keys: Option<u64>,
}

/// Why a limit refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LimitReasons {
    /// Over its quota.
    pub rate_limited: u64,
    /// Under a penalty block.
    pub blocked: u64,
    /// Its store was full of active keys and could not track the key.
    pub key_table_full: u64,
}

/// One concurrency limiter.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct LeaseStats {
    /// Its name.
    pub name: String,
    /// `in_flight` (requests) or `websocket` (connections).
    pub kind: &'static str,
    /// The routes it limits.
    pub routes: Vec<String>,
    /// Leases held in this process now.
    pub in_use: u64,
    /// Leases it refused.
    pub refused: u64,
    /// Refused per second over the sampler's interval.
    pub refused_per_second: Option<f64>,
    /// Its adaptive limit, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveStats>,
}

/// An [adaptive limit](crate::AdaptiveLimit) now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AdaptiveStats {
    /// `gradient` or `aimd`.
    pub algorithm: &'static str,
    /// The cap now.
    pub limit: u32,
    /// The mean latency of its last window, in milliseconds (`None` before one closed).
    pub latency_ms: Option<f64>,
    /// The minimum latency a gradient limit measured, in milliseconds.
    pub min_latency_ms: Option<f64>,
}

impl AdaptiveStats {
    pub(crate) fn of(limit: &crate::AdaptiveLimit) -> Self {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        AdaptiveStats {
            algorithm: match limit.settings().algorithm {
                crate::concurrency::AdaptiveAlgorithm::Aimd { .. } => "aimd",
                _ => "gradient",
            },
            limit: limit.current(),
            latency_ms: ms(limit.latency()),
            min_latency_ms: ms(limit.min_latency()),
        }
    }
}

/// How a store is doing: what [`Store::health`](crate::Store::health) answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StoreHealth {
    /// What it is: `memory`, `redis`, ...
    pub kind: &'static str,
    /// Whether it decides.
    pub state: StoreState,
    /// Its circuit breaker, for a store with one.
    pub breaker: Option<BreakerState>,
    /// A line for the operator (why it is unavailable, say).
    pub detail: Option<String>,
    /// Numbers of its own (e.g. a cache's hits), by name.
    pub counters: BTreeMap<&'static str, u64>,
}

impl StoreHealth {
    /// A store of `kind` that decides, without a breaker, detail or counters.
    pub fn ok(kind: &'static str) -> Self {
        Self { kind, state: StoreState::Ok, breaker: None, detail: None, counters: BTreeMap::new() }
    }

    /// With `state`.
    #[must_use]
    pub fn state(mut self, state: StoreState) -> Self {
        self.state = state;
        self
    }

    /// With its circuit breaker's state.
    #[must_use]
    pub fn breaker(mut self, breaker: BreakerState) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// With a line for the operator.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// With the number `name`.
    #[must_use]
    pub fn counter(mut self, name: &'static str, value: u64) -> Self {
        self.counters.insert(name, value);
        self
    }
}

/// Whether a store decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoreState {
    /// It decides.
    Ok,
    /// It decides, with trouble (some nodes down, say).
    Degraded,
    /// It does not decide: the policies' failure modes do.
    Unavailable,
}

/// A circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once until a probe succeeds.
    Open,
}

/// One of the most refused keys.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopKey {
    /// The key as [`Key`](crate::Key)'s `Display` shows it.
    pub key: String,
    /// The policy that refused it (or the concurrency limiter).
    pub policy: String,
    /// The limit that refused it, when one did.
    pub limit: Option<String>,
    /// The last reason it was refused for.
    pub reason: &'static str,
    /// Its refusals: at least the true count, at most `error` more.
    pub count: u64,
    /// How much `count` may be over.
    pub error: u64,
    /// Refusals per second over the sampler's interval, when it was listed before too.
    pub per_second: Option<f64>,
}

impl Snapshot {
    /// A snapshot of `policies`, `leases` and `top_refused` (merged from every table: the most
    /// counted [`TOP_KEYS`] are kept), taken now, its totals summed and its store the worst of
    /// the policies'.
    pub(crate) fn new(policies: Vec<PolicyStats>, leases: Vec<LeaseStats>, mut top_refused: Vec<TopKey>) -> Self {
        let totals = policies.iter().fold(Totals::default(), |t, p| Totals {
            allowed: t.allowed + p.allowed,
            delayed: t.delayed + p.delayed,
            refused: t.refused + p.refused,
            per_second: None,
        });
        let store = policies.iter().map(|p| &p.store).max_by_key(|s| s.state).cloned();
        top_refused.sort_by(|a, b| b.count.cmp(&a.count).then(a.error.cmp(&b.error)));
        top_refused.truncate(TOP_KEYS);
        let taken_at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Snapshot {
            schema_version: SCHEMA_VERSION,
            taken_at_unix_ms,
            interval_ms: None,
            totals,
            policies,
            leases,
            store,
            top_refused,
        }
    }

    /// This snapshot with its `per_second` rates over `elapsed` since `previous` (matched by
    /// name; a count lower than before, a policy rebuilt say, counts as none in between).
    #[must_use]
    pub fn with_rates_since(mut self, previous: &Snapshot, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return self;
        }
        let rate = |now: u64, before: u64| ((now.saturating_sub(before)) as f64 / secs * 100.0).round() / 100.0;
        let rates = |now: (u64, u64, u64), before: (u64, u64, u64)| Rates {
            allowed: rate(now.0, before.0),
            delayed: rate(now.1, before.1),
            refused: rate(now.2, before.2),
        };
        self.interval_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        let t = &previous.totals;
        self.totals.per_second = Some(rates(
            (self.totals.allowed, self.totals.delayed, self.totals.refused),
            (t.allowed, t.delayed, t.refused),
        ));
        for policy in &mut self.policies {
            let before = previous.policies.iter().find(|p| p.name == policy.name);
            let b = before.map_or((0, 0, 0), |p| (p.allowed, p.delayed, p.refused));
            policy.per_second = Some(rates((policy.allowed, policy.delayed, policy.refused), b));
            for limit in &mut policy.limits {
                let was = before.and_then(|p| p.limits.iter().find(|l| l.name == limit.name)).map_or(0, |l| l.refused);
                limit.refused_per_second = Some(rate(limit.refused, was));
            }
        }
        for lease in &mut self.leases {
            let was = previous.leases.iter().find(|l| l.name == lease.name && l.kind == lease.kind);
            lease.refused_per_second = Some(rate(lease.refused, was.map_or(0, |l| l.refused)));
        }
        for top in &mut self.top_refused {
            let was = previous
                .top_refused
                .iter()
                .find(|t| t.key == top.key && t.policy == top.policy && t.limit == top.limit);
            top.per_second = was.map(|was| rate(top.count, was.count));
        }
        self
    }

    /// The snapshot in the JSON schema of the [module docs](self).
    pub fn to_json(&self) -> String {
        // Nothing in a snapshot fails to serialize (no maps with other than text keys, no
        // non-finite numbers: rates are over a positive interval); say so in JSON if it did.
        serde_json::to_string(self).unwrap_or_else(|err| {
            serde_json::json!({ "schema_version": SCHEMA_VERSION, "error": err.to_string() }).to_string()
        })
    }
}
