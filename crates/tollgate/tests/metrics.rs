//! The metrics of `tollgate::observe`, read back from a real `metrics` recorder (metrics-util's
//! debugging recorder, installed for the test's thread).
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::Down;
use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use tollgate::observe::{
    DECISION_SECONDS, DECISIONS, LEASE_REFUSALS, LEASES_IN_USE, STORE_FAILURES, WEBSOCKET_CLOSES, WEBSOCKET_MESSAGES,
};
use tollgate::websocket::{MessageGate, MessageKind, MessageLimits, Verdict};
use tollgate::{
    Admission, ConcurrencyLimiter, FailureMode, Key, KeyKind, Limit, MissingKey, Policy, Quota, RequestKeys,
};

fn q(s: &str) -> Quota {
    s.parse().unwrap()
}

fn ip(last: u8) -> RequestKeys<'static> {
    RequestKeys { ip: Some([198, 51, 100, last].into()), ..RequestKeys::default() }
}

/// Runs `f` with a fresh recorder for this thread, then reads what it recorded (before what `f`
/// returns is dropped).
fn recorded<T>(f: impl FnOnce() -> T) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _kept = metrics::with_local_recorder(&recorder, f);
    Recorded(snapshotter.snapshot().into_vec())
}

/// What a recorder holds, read once (reading resets counters).
struct Recorded(Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>);

impl Recorded {
    /// The value of the metric `name` whose labels are exactly `labels`.
    fn value(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, _, _, value)| matches(key, kind, name, labels).then_some(value))
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn decisions(&self, policy: &str, outcome: &str) -> u64 {
        self.counter(DECISIONS, &[("policy", policy), ("outcome", outcome)])
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(MetricKind::Gauge, name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn histogram_len(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.value(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(v)) => v.len(),
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn matches(key: &CompositeKey, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> bool {
    let mut got: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
    let mut want = labels.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    key.kind() == kind && key.key().name() == name && got == want
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

#[test]
fn decisions_are_counted_by_policy_and_outcome_on_every_path() {
    let r = recorded(|| {
        let policy = Policy::builder("api").limit(Limit::new("per_ip", q("2/min")).key(KeyKind::ip())).build().unwrap();
        // The middleware's path, the synchronous one and the future, alike.
        assert!(matches!(policy.try_admit_now(&ip(1), 1, true, |_| ()), Some(Ok(Admission::Admitted(_)))));
        assert!(policy.try_check_now(&ip(1), 1).unwrap().unwrap().allowed);
        assert!(matches!(policy.try_admit_now(&ip(1), 1, true, |_| ()), Some(Ok(Admission::Refused(())))));
        assert!(!policy.try_check_now(&ip(1), 1).unwrap().unwrap().allowed);
        assert!(!block_on(policy.check(&ip(1), 1)).unwrap().allowed);

        let listed = Policy::builder("listed")
            .limit(Limit::new("per_ip", q("1/min")).key(KeyKind::ip()).on_missing_key(MissingKey::Refuse))
            .allow("198.51.100.7".parse::<std::net::IpAddr>().unwrap())
            .deny("198.51.100.9".parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        assert!(listed.try_check_now(&ip(7), 1).unwrap().unwrap().allowed);
        assert!(!listed.try_check_now(&ip(9), 1).unwrap().unwrap().allowed);
        assert!(!listed.try_check_now(&RequestKeys::default(), 1).unwrap().unwrap().allowed);
        assert!(listed.try_check_now(&ip(1), 1).unwrap().unwrap().allowed);
    });
    assert_eq!(r.decisions("api", "allowed"), 2);
    assert_eq!(r.decisions("api", "rate_limited"), 3);
    assert_eq!(r.decisions("listed", "allow_listed"), 1);
    assert_eq!(r.decisions("listed", "denied"), 1);
    assert_eq!(r.decisions("listed", "key_missing"), 1);
    assert_eq!(r.decisions("listed", "allowed"), 1);
    // In-memory decisions are not timed.
    assert_eq!(r.histogram_len(DECISION_SECONDS, &[("policy", "api")]), 1, "only the one through check()");
}

#[test]
fn a_full_key_table_is_counted_apart_from_violations() {
    let r = recorded(|| {
        let store = tollgate::MemoryStore::builder().shards(1).max_keys(1).build();
        let policy =
            Policy::builder("full").limit(Limit::new("per_ip", q("1/h")).key(KeyKind::ip())).build_with(store).unwrap();
        // One shard of 1 + 16 places: the 18th new key finds it full of busy keys.
        for n in 1..=20 {
            policy.try_check_now(&ip(n), 1).unwrap().unwrap();
        }
        assert!(!policy.try_check_now(&ip(1), 1).unwrap().unwrap().allowed);
    });
    assert_eq!(r.decisions("full", "allowed"), 17);
    assert_eq!(r.decisions("full", "key_table_full"), 3);
    assert_eq!(r.decisions("full", "rate_limited"), 1);
}

#[test]
fn store_failures_are_counted_with_the_mode_that_decided() {
    let r = recorded(|| {
        let limit = || Limit::new("per_ip", q("1/min")).key(KeyKind::ip());
        let open = Policy::builder("o").limit(limit()).failure_mode(FailureMode::Open).build_with(Down).unwrap();
        let closed = Policy::builder("c").limit(limit()).failure_mode(FailureMode::Closed).build_with(Down).unwrap();
        let fallback =
            Policy::builder("f").limit(limit()).failure_mode(FailureMode::Fallback).build_with(Down).unwrap();
        block_on(async {
            assert!(open.check(&ip(1), 1).await.unwrap().allowed);
            assert!(!closed.check(&ip(1), 1).await.unwrap().allowed);
            assert!(fallback.check(&ip(1), 1).await.unwrap().allowed);
            assert!(!fallback.check(&ip(1), 1).await.unwrap().allowed);
        });
    });
    assert_eq!(r.counter(STORE_FAILURES, &[("policy", "o"), ("mode", "open")]), 1);
    assert_eq!(r.counter(STORE_FAILURES, &[("policy", "c"), ("mode", "closed")]), 1);
    assert_eq!(r.counter(STORE_FAILURES, &[("policy", "f"), ("mode", "fallback")]), 2);
    assert_eq!(r.decisions("o", "store_unavailable_failed_open"), 1);
    assert_eq!(r.decisions("c", "store_unavailable"), 1);
    assert_eq!(r.decisions("f", "allowed"), 1);
    assert_eq!(r.decisions("f", "rate_limited"), 1);
    assert_eq!(r.histogram_len(DECISION_SECONDS, &[("policy", "f")]), 2);
}

#[test]
fn leases_in_use_and_refusals() {
    let r = recorded(|| {
        let limiter = ConcurrencyLimiter::new("ws").per_key(2).global(3);
        let a = limiter.try_acquire(Key::Text("alice")).unwrap();
        let b = limiter.try_acquire(Key::Text("alice")).unwrap();
        limiter.try_acquire(Key::Text("alice")).unwrap_err();
        let c = limiter.try_acquire(Key::Text("bob")).unwrap();
        limiter.try_acquire(Key::Text("carol")).unwrap_err();
        drop((a, b));
        assert_eq!(limiter.in_use(), 1);
        c
    });
    assert_eq!(r.gauge(LEASES_IN_USE, &[("limiter", "ws")]), 1.0, "bob's lease is still held");
    assert_eq!(r.counter(LEASE_REFUSALS, &[("limiter", "ws"), ("scope", "per_key")]), 1);
    assert_eq!(r.counter(LEASE_REFUSALS, &[("limiter", "ws"), ("scope", "global")]), 1);
}

#[test]
fn websocket_messages_and_closes() {
    let r = recorded(|| {
        let limits = Arc::new(MessageLimits::new().messages(q("2/min")).max_message_size(100));
        let mut gate = MessageGate::new(Arc::clone(&limits));
        assert_eq!(gate.check(MessageKind::Text, 5, Some("hello")), Verdict::Allow);
        assert_eq!(gate.check(MessageKind::Ping, 1, None), Verdict::Allow);
        assert_eq!(gate.check(MessageKind::Binary, 5, None), Verdict::Allow);
        assert!(matches!(gate.check(MessageKind::Text, 5, Some("hello")), Verdict::Drop(_)));
        assert!(matches!(gate.check(MessageKind::Binary, 500, None), Verdict::Close(c) if c.code == 1009));
        assert_eq!(gate.too_large(1 << 20, 4096).code, 1009);
    });
    assert_eq!(r.counter(WEBSOCKET_MESSAGES, &[("outcome", "allowed")]), 2, "the ping is not a message");
    assert_eq!(r.counter(WEBSOCKET_MESSAGES, &[("outcome", "dropped")]), 1);
    assert_eq!(r.counter(WEBSOCKET_MESSAGES, &[("outcome", "closed")]), 1);
    assert_eq!(r.counter(WEBSOCKET_CLOSES, &[("code", "1009")]), 2, "the gate's and the socket's");
}

#[test]
fn an_adaptive_limit_reports_its_cap_latency_and_refusals() {
    use std::time::Duration;
    use tollgate::concurrency::Outcome;
    use tollgate::observe::{ADAPTIVE_LATENCY, ADAPTIVE_LIMIT, ADAPTIVE_MIN_LATENCY};
    use tollgate::{AdaptiveLimit, ConcurrencyScope, ManualClock};

    let clock = ManualClock::new();
    let recorded = recorded(|| {
        let limit = AdaptiveLimit::aimd(Duration::from_millis(50))
            .initial(2)
            .bounds(1, 10)
            .min_samples(2)
            .window(Duration::from_millis(1))
            .clock(clock.clone())
            .build()
            .unwrap();
        let limiter = ConcurrencyLimiter::new("search").adaptive(limit);
        let (mut a, mut b) = (limiter.try_acquire(Key::Int(1)).unwrap(), limiter.try_acquire(Key::Int(2)).unwrap());
        assert_eq!(limiter.try_acquire(Key::Int(3)).unwrap_err().scope, ConcurrencyScope::Adaptive);
        clock.advance(Duration::from_millis(20));
        a.record(Outcome::Succeeded);
        b.record(Outcome::Succeeded);
        limiter
    });
    // Two of 2 held, 20 ms under the 50 ms threshold: one more.
    assert_eq!(recorded.gauge(ADAPTIVE_LIMIT, &[("limiter", "search")]), 3.0);
    assert!((recorded.gauge(ADAPTIVE_LATENCY, &[("limiter", "search")]) - 0.020).abs() < 1e-9);
    assert_eq!(recorded.gauge(ADAPTIVE_MIN_LATENCY, &[("limiter", "search")]), 0.0, "AIMD measures no minimum");
    assert_eq!(recorded.counter(LEASE_REFUSALS, &[("limiter", "search"), ("scope", "adaptive")]), 1);
}
