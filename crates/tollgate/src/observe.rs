//! Metrics of the decisions, through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`; without it every call here is compiled out).
//!
//! Install any `metrics` recorder (e.g. `metrics-exporter-prometheus`), optionally call
//! [`describe`] once for the help texts, and tollgate reports:
//!
//! | metric | kind | labels | counts |
//! | --- | --- | --- | --- |
//! | [`DECISIONS`] `tollgate_decisions_total` | counter | `policy`, `outcome` | every policy decision; `outcome` is the [`Reason`] (`allowed`, `rate_limited`, `blocked`, `denied`, `allow_listed`, `key_missing`, `store_unavailable`, `store_unavailable_failed_open`); a dry-run refusal counts as the reason it would refuse for |
//! | [`DECISION_SECONDS`] `tollgate_decision_seconds` | histogram | `policy` | how long [`Policy::check`](crate::Policy::check) took: the asynchronous path, which middleware takes for stores with I/O such as Redis (their in-memory checks, `try_check_now`/`try_admit_now`, take tens of nanoseconds and are not timed) |
//! | [`STORE_FAILURES`] `tollgate_store_failures_total` | counter | `policy` (or the concurrency limiter's name), `mode` | store errors, with the [`FailureMode`] that decided (`open`, `closed`, `fallback`) |
//! | [`LEASES_IN_USE`] `tollgate_leases_in_use` | gauge | `limiter` | concurrency leases held in this process |
//! | [`LEASE_REFUSALS`] `tollgate_lease_refusals_total` | counter | `limiter`, `scope` | leases refused: `per_key`, `global`, `store_unavailable`, `adaptive` |
//! | [`ADAPTIVE_LIMIT`] `tollgate_adaptive_limit` | gauge | `limiter` | an [adaptive limit](crate::AdaptiveLimit)'s cap, set each time a measuring window closes |
//! | [`ADAPTIVE_LATENCY`] `tollgate_adaptive_latency_seconds` | gauge | `limiter` | the mean latency of its last window |
//! | [`ADAPTIVE_MIN_LATENCY`] `tollgate_adaptive_min_latency_seconds` | gauge | `limiter` | the minimum latency a gradient limit measured (0 for AIMD) |
//! | [`WEBSOCKET_MESSAGES`] `tollgate_websocket_messages_total` | counter | `outcome` | text and binary messages a [`MessageGate`](crate::websocket::MessageGate) decided: `allowed`, `delayed`, `dropped`, `closed` (a ping or pong flood that closes counts as `closed` too) |
//! | [`WEBSOCKET_CLOSES`] `tollgate_websocket_closes_total` | counter | `code` | connections a gate closed, by close code (`1008`, `1009`, `1013`, `4429`), including over a message the socket refused for its own size cap, which never reaches the gate ([`MessageGate::too_large`](crate::websocket::MessageGate::too_large)) |
//! | [`RELOADS`] `tollgate_reloads_total` | counter | `source`, `outcome` | configurations a [`LiveEngine`](crate::live::LiveEngine) was given: `source` `api` (a call), `file` (the watched file changed) or `signal` (`SIGHUP`); `outcome` `applied` or `refused` (invalid: the running limits stayed) |
//!
//! Label values are the names given in code or configuration, so their number is bounded by
//! them, never by clients.
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! // With a recorder installed (here none: the calls are no-ops), describe the metrics once:
//! tollgate::observe::describe();
//! # }
//! ```

use crate::concurrency::ConcurrencyScope;
use crate::decision::Reason;
use crate::policy::FailureMode;
use crate::stats::counters::{DecisionCounters, Refusals};
use crate::websocket::{MessageKind, Verdict};

/// Policy decisions, by `policy` and `outcome`.
pub const DECISIONS: &str = "tollgate_decisions_total";
/// Seconds per [`Policy::check`](crate::Policy::check), by `policy`.
pub const DECISION_SECONDS: &str = "tollgate_decision_seconds";
/// Store failures, by `policy` and `mode`.
pub const STORE_FAILURES: &str = "tollgate_store_failures_total";
/// Concurrency leases held, by `limiter`.
pub const LEASES_IN_USE: &str = "tollgate_leases_in_use";
/// Concurrency leases refused, by `limiter` and `scope`.
pub const LEASE_REFUSALS: &str = "tollgate_lease_refusals_total";
/// An adaptive concurrency limit's cap, by `limiter`.
pub const ADAPTIVE_LIMIT: &str = "tollgate_adaptive_limit";
/// An adaptive concurrency limit's last window's mean latency, by `limiter`.
pub const ADAPTIVE_LATENCY: &str = "tollgate_adaptive_latency_seconds";
/// A gradient limit's measured minimum latency, by `limiter`.
pub const ADAPTIVE_MIN_LATENCY: &str = "tollgate_adaptive_min_latency_seconds";
/// WebSocket messages decided, by `outcome`.
pub const WEBSOCKET_MESSAGES: &str = "tollgate_websocket_messages_total";
/// WebSocket connections closed by a gate, by `code`.
pub const WEBSOCKET_CLOSES: &str = "tollgate_websocket_closes_total";
/// Configurations a live engine was given, by `source` and `outcome`.
pub const RELOADS: &str = "tollgate_reloads_total";

/// Registers the help text and unit of each metric with the installed recorder (once, after
/// installing it; a no-op without the `metrics` feature).
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(DECISIONS, "Rate-limit decisions by policy and outcome");
        describe_histogram!(DECISION_SECONDS, Unit::Seconds, "Time to decide on a store with I/O, by policy");
        describe_counter!(STORE_FAILURES, "Rate-limit store failures, by policy and the failure mode that decided");
        describe_gauge!(LEASES_IN_USE, "Concurrency leases held in this process, by limiter");
        describe_counter!(LEASE_REFUSALS, "Concurrency leases refused, by limiter and scope");
        describe_gauge!(ADAPTIVE_LIMIT, "An adaptive concurrency limit's current cap, by limiter");
        describe_gauge!(ADAPTIVE_LATENCY, Unit::Seconds, "Mean latency of an adaptive limit's last window, by limiter");
        describe_gauge!(ADAPTIVE_MIN_LATENCY, Unit::Seconds, "Minimum latency a gradient limit measured, by limiter");
        describe_counter!(WEBSOCKET_MESSAGES, "WebSocket messages decided, by outcome");
        describe_counter!(WEBSOCKET_CLOSES, "WebSocket connections closed over a limit, by close code");
        describe_counter!(RELOADS, "Configurations given to a live engine, by source and outcome (applied, refused)");
    }
}

/// A policy's metric handles, registered with the recorder at its first decision (install the
/// recorder before serving); registering on every decision would build the labels each time
/// (about 500 instructions and an allocation per request, measured).
///
/// Its counts are also kept without the feature, for [`stats`](crate::stats) snapshots: one
/// relaxed increment per decision on a counter of the thread's own.
#[derive(Default)]
pub(crate) struct PolicyMetrics {
    #[cfg(feature = "metrics")]
    handles: std::sync::OnceLock<PolicyHandles>,
    /// Decisions by reason, the delayed ones and the store failures.
    pub(crate) counts: DecisionCounters,
    /// Refusals by limit and the most refused keys (allocated at the first refusal).
    pub(crate) refusals: Refusals,
}

#[cfg(feature = "metrics")]
struct PolicyHandles {
    /// By [`Reason::index`].
    decisions: [metrics::Counter; REASONS.len()],
    seconds: metrics::Histogram,
}

/// Every reason, in [`Reason::index`]'s order.
#[cfg(feature = "metrics")]
const REASONS: [Reason; Reason::COUNT] = [
    Reason::Allowed,
    Reason::AllowListed,
    Reason::RateLimited,
    Reason::Blocked,
    Reason::DenyListed,
    Reason::KeyMissing,
    Reason::StoreUnavailable,
    Reason::StoreUnavailableFailedOpen,
    Reason::KeyTableFull,
];

impl PolicyMetrics {
    #[cfg(feature = "metrics")]
    fn handles(&self, policy: &'static str) -> &PolicyHandles {
        self.handles.get_or_init(|| PolicyHandles {
            decisions: REASONS.map(|r| metrics::counter!(DECISIONS, "policy" => policy, "outcome" => r.as_str())),
            seconds: metrics::histogram!(DECISION_SECONDS, "policy" => policy),
        })
    }

    /// A decision of the policy `policy`, which made the request wait when `delayed`.
    #[inline(always)]
    pub(crate) fn decision(&self, policy: &'static str, reason: Reason, delayed: bool) {
        self.counts.decision(reason, delayed);
        #[cfg(feature = "metrics")]
        self.handles(policy).decisions[reason.index()].increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = policy;
    }

    /// When `Policy::check` started, if its time is measured.
    #[inline(always)]
    pub(crate) fn start(&self) -> Option<std::time::Instant> {
        #[cfg(feature = "metrics")]
        return Some(std::time::Instant::now());
        #[cfg(not(feature = "metrics"))]
        None
    }

    /// `Policy::check` of `policy` finished.
    #[inline(always)]
    pub(crate) fn decided(&self, policy: &'static str, started: Option<std::time::Instant>) {
        #[cfg(feature = "metrics")]
        if let Some(started) = started {
            self.handles(policy).seconds.record(started.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (policy, started);
    }
}

/// Adds one to the counter `name` with `labels`: for rare events, registered each time.
fn count<const N: usize>(name: &'static str, labels: [(&'static str, &'static str); N]) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name, &labels).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, labels);
}

/// A store failed; `mode` decided.
pub(crate) fn store_failure(name: &'static str, mode: FailureMode) {
    let mode = match mode {
        FailureMode::Open => "open",
        FailureMode::Closed => "closed",
        FailureMode::Fallback => "fallback",
    };
    count(STORE_FAILURES, [("policy", name), ("mode", mode)]);
}

/// A live engine was given a configuration from `source` (`api`, `file`, `signal`): `outcome`
/// `applied` or `refused`.
pub(crate) fn reload(source: &'static str, outcome: &'static str) {
    count(RELOADS, [("source", source), ("outcome", outcome)]);
}

/// A concurrency limiter's gauge of leases held, registered at its first lease.
#[derive(Default)]
pub(crate) struct LeaseMetrics {
    #[cfg(feature = "metrics")]
    in_use: std::sync::OnceLock<metrics::Gauge>,
}

impl LeaseMetrics {
    /// A lease of `limiter` taken (`+1`) or given back (`-1`).
    #[inline(always)]
    pub(crate) fn leases(&self, limiter: &'static str, delta: i8) {
        #[cfg(feature = "metrics")]
        self.in_use.get_or_init(|| metrics::gauge!(LEASES_IN_USE, "limiter" => limiter)).increment(f64::from(delta));
        #[cfg(not(feature = "metrics"))]
        let _ = (limiter, delta);
    }
}

/// An adaptive limit's gauges, registered when its first window closes.
#[derive(Default)]
pub(crate) struct AdaptiveMetrics {
    #[cfg(feature = "metrics")]
    gauges: std::sync::OnceLock<[metrics::Gauge; 3]>,
}

impl AdaptiveMetrics {
    /// A window of the limit of `limiter` closed: its cap, mean latency and minimum latency
    /// (nanoseconds; 0 for none).
    pub(crate) fn window(&self, limiter: &'static str, limit: u32, latency: u64, min_latency: u64) {
        #[cfg(feature = "metrics")]
        {
            let [cap, mean, min] = self.gauges.get_or_init(|| {
                [
                    metrics::gauge!(ADAPTIVE_LIMIT, "limiter" => limiter),
                    metrics::gauge!(ADAPTIVE_LATENCY, "limiter" => limiter),
                    metrics::gauge!(ADAPTIVE_MIN_LATENCY, "limiter" => limiter),
                ]
            });
            cap.set(f64::from(limit));
            mean.set(latency as f64 / 1e9);
            min.set(min_latency as f64 / 1e9);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (limiter, limit, latency, min_latency);
    }
}

/// A lease refused.
pub(crate) fn lease_refused(limiter: &'static str, scope: ConcurrencyScope) {
    let scope = match scope {
        ConcurrencyScope::PerKey => "per_key",
        ConcurrencyScope::Global => "global",
        ConcurrencyScope::StoreUnavailable => "store_unavailable",
        ConcurrencyScope::Adaptive => "adaptive",
    };
    count(LEASE_REFUSALS, [("limiter", limiter), ("scope", scope)]);
}

/// A WebSocket connection's message counters, registered at its first message.
#[derive(Default)]
pub(crate) struct WebSocketMetrics {
    #[cfg(feature = "metrics")]
    messages: Option<[metrics::Counter; 4]>,
}

impl WebSocketMetrics {
    /// A gate's verdict on a message of `kind` (pings and pongs count only when they close).
    #[inline(always)]
    pub(crate) fn verdict(&mut self, kind: MessageKind, verdict: &Verdict) {
        #[cfg(feature = "metrics")]
        {
            let outcome = match verdict {
                Verdict::Close(frame) => {
                    websocket_close(frame.code);
                    3
                }
                _ if !matches!(kind, MessageKind::Text | MessageKind::Binary) => return,
                Verdict::Allow => 0,
                Verdict::Delay(_) => 1,
                Verdict::Drop(_) => 2,
            };
            let counters = self.messages.get_or_insert_with(|| {
                ["allowed", "delayed", "dropped", "closed"]
                    .map(|outcome| metrics::counter!(WEBSOCKET_MESSAGES, "outcome" => outcome))
            });
            counters[outcome].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, verdict);
    }
}

/// A connection closed with `code` (once per connection).
pub(crate) fn websocket_close(code: u16) {
    use crate::websocket::close_code;
    let code = match code {
        close_code::POLICY_VIOLATION => "1008",
        close_code::MESSAGE_TOO_BIG => "1009",
        close_code::TRY_AGAIN_LATER => "1013",
        close_code::RATE_LIMITED => "4429",
        _ => "other",
    };
    count(WEBSOCKET_CLOSES, [("code", code)]);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_in_their_index_order() {
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }
}
