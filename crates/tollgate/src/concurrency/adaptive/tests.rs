//! The adaptive limits against a simulated service on a manual clock: a pool of `N` workers,
//! each request taking a fixed time, so that latency rises sharply past `N` in flight (requests
//! queue). Closed-loop clients send the next request as soon as one is answered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::concurrency::{ConcurrencyLimiter, ConcurrencyScope, ConnectionLease};
use crate::key::Key;

const MS: u64 = 1_000_000;

/// What the simulation saw each 100 ms: the cap, the requests in flight and their mean latency.
struct Trace {
    at_ms: u64,
    limit: u32,
    latency_ms: f64,
}

struct Sim {
    clock: ManualClock,
    limiter: ConcurrencyLimiter,
    workers: usize,
    service: u64,
    busy: usize,
    queue: VecDeque<(usize, ConnectionLease, u64)>,
    /// (time, client, event): 0 send, 1 done (the worker it held).
    events: BinaryHeap<Reverse<(u64, usize, u8)>>,
    running: Vec<Option<(ConnectionLease, u64)>>,
    latencies: Vec<u64>,
    refused: u64,
}

impl Sim {
    fn new(limit: AdaptiveLimit, clock: ManualClock, workers: usize, service: Duration) -> Self {
        Sim {
            clock,
            limiter: ConcurrencyLimiter::new("sim").adaptive(limit),
            workers,
            service: u64::try_from(service.as_nanos()).unwrap(),
            busy: 0,
            queue: VecDeque::new(),
            events: BinaryHeap::new(),
            running: Vec::new(),
            latencies: Vec::new(),
            refused: 0,
        }
    }

    /// Runs `clients` closed-loop clients (the number may change: `load(t_ms)`) until `until_ms`.
    fn run(&mut self, until_ms: u64, load: impl Fn(u64) -> usize, trace: &mut Vec<Trace>) {
        let start = self.clock.now();
        let mut next_trace = start;
        let mut started = 0;
        loop {
            let now = self.clock.now();
            let want = load((now - start) / MS);
            while started < want {
                self.running.push(None);
                self.events.push(Reverse((now, started, 0)));
                started += 1;
            }
            let Some(Reverse((at, client, event))) = self.events.pop() else { break };
            if at > start + until_ms * MS {
                break;
            }
            while next_trace <= at {
                let window: Vec<u64> = std::mem::take(&mut self.latencies);
                let mean =
                    if window.is_empty() { 0.0 } else { window.iter().sum::<u64>() as f64 / window.len() as f64 };
                trace.push(Trace {
                    at_ms: (next_trace - start) / MS,
                    limit: self.limiter.adaptive_limit().unwrap().current(),
                    latency_ms: mean / MS as f64,
                });
                next_trace += 100 * MS;
            }
            self.clock.set(at);
            match event {
                0 if client >= load((at - start) / MS) => {} // this client stopped
                0 => match self.limiter.try_acquire(Key::Int(client as u64)) {
                    Ok(lease) if self.busy < self.workers => {
                        self.busy += 1;
                        self.running[client] = Some((lease, at));
                        self.events.push(Reverse((at + self.service, client, 1)));
                    }
                    Ok(lease) => self.queue.push_back((client, lease, at)),
                    Err(refused) => {
                        assert_eq!(refused.scope, ConcurrencyScope::Adaptive);
                        self.refused += 1;
                        self.events.push(Reverse((at + 2 * MS, client, 0)));
                    }
                },
                _ => {
                    let (mut lease, sent) = self.running[client].take().unwrap();
                    lease.record(Outcome::Succeeded);
                    drop(lease);
                    self.latencies.push(at - sent);
                    self.events.push(Reverse((at, client, 0)));
                    match self.queue.pop_front() {
                        Some((next, lease, sent)) => {
                            self.running[next] = Some((lease, sent));
                            self.events.push(Reverse((at + self.service, next, 1)));
                        }
                        None => self.busy -= 1,
                    }
                }
            }
        }
    }
}

/// The caps seen from `from_ms` on, and whether every one is within `±share` of `n`.
fn within(trace: &[Trace], from_ms: u64, n: usize, share: f64) -> Result<(), String> {
    let seen: Vec<u32> = trace.iter().filter(|t| t.at_ms >= from_ms).map(|t| t.limit).collect();
    if seen.len() < 10 {
        return Err(format!("only {} windows after {from_ms} ms: {seen:?}", seen.len()));
    }
    let (low, high) = (n as f64 * (1.0 - share), n as f64 * (1.0 + share));
    match seen.iter().find(|&&l| f64::from(l) < low || f64::from(l) > high) {
        None => Ok(()),
        Some(l) => Err(format!("cap {l} outside {low:.1}..={high:.1} after {from_ms} ms: {seen:?}")),
    }
}

fn gradient(clock: &ManualClock) -> AdaptiveLimit {
    AdaptiveLimit::gradient().probe_every(Duration::from_secs(5)).clock(clock.clone()).build().unwrap()
}

#[test]
fn the_gradient_settles_near_the_workers_the_service_has() {
    for n in [10, 25, 50, 100] {
        let clock = ManualClock::new();
        let mut sim = Sim::new(gradient(&clock), clock, n, Duration::from_millis(20));
        let mut trace = Vec::new();
        sim.run(12_000, |_| 3 * n, &mut trace);
        // Settled within 3 s; outside the probes of the minimum latency (every 5 s + up to 1/8),
        // which lower the cap to `min` for one window.
        let probing = trace.iter().filter(|t| t.at_ms >= 3_000 && t.limit <= 4).count();
        assert!(probing <= 2, "N = {n}: {probing} traces at `min` after 3 s (one probe window each 5 s)");
        let settled: Vec<Trace> = trace.into_iter().filter(|t| t.limit > 4).collect();
        within(&settled, 3_000, n, 0.3).unwrap_or_else(|e| panic!("N = {n}: {e}"));
        // The admitted requests' latency stays bounded: no more than the cap's queue.
        let worst = settled.iter().filter(|t| t.at_ms >= 3_000).map(|t| t.latency_ms).fold(0.0, f64::max);
        assert!(worst <= 20.0 * 1.3 * 1.3, "N = {n}: {worst} ms");
    }
}

#[test]
fn aimd_settles_under_its_latency_threshold() {
    for n in [10, 25, 50] {
        let clock = ManualClock::new();
        let limit =
            AdaptiveLimit::aimd(Duration::from_millis(24)).initial(n as u32 / 2).clock(clock.clone()).build().unwrap();
        let mut sim = Sim::new(limit, clock, n, Duration::from_millis(20));
        let mut trace = Vec::new();
        sim.run(10_000, |_| 3 * n, &mut trace);
        within(&trace, 5_000, n, 0.3).unwrap_or_else(|e| panic!("N = {n}: {e}"));
    }
}

#[test]
fn the_cap_follows_load_up_and_down_and_does_not_grow_unused() {
    let n = 40;
    let clock = ManualClock::new();
    let limit = gradient(&clock);
    let mut sim = Sim::new(limit.clone(), clock, n, Duration::from_millis(20));
    let mut trace = Vec::new();
    // 10 clients (a quarter of what the service takes), then 120, then 10 again.
    let load = |t: u64| if (3_000..8_000).contains(&t) { 120 } else { 10 };
    sim.run(11_000, load, &mut trace);
    assert!(trace.iter().filter(|t| t.at_ms >= 1_000 && t.limit <= 4).count() <= 2, "rare probes only");
    for t in trace.iter().filter(|t| (1_000..3_000).contains(&t.at_ms) && t.limit > 4) {
        assert!(t.limit <= 25, "an unused cap grew: {} at {} ms", t.limit, t.at_ms);
    }
    let busy: Vec<Trace> = trace.into_iter().filter(|t| (5_000..8_000).contains(&t.at_ms) && t.limit > 4).collect();
    within(&busy, 5_000, n, 0.3).unwrap();
    assert!(sim.refused > 0, "the excess was refused");
}

/// `n` requests of `latency` each, started together, recorded with `outcome`.
fn requests(limiter: &ConcurrencyLimiter, clock: &ManualClock, n: u64, latency: Duration, outcome: Outcome) {
    let mut leases: Vec<ConnectionLease> = (0..n).map(|i| limiter.try_acquire(Key::Int(i)).unwrap()).collect();
    clock.advance(latency);
    for lease in &mut leases {
        lease.record(outcome);
    }
}

#[test]
fn failures_back_off_and_the_probe_comes_back_to_the_cap() {
    // Windows of 1 ms and 10 latencies: each step below is one window of 10 requests.
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::gradient()
        .bounds(2, 100)
        .initial(15)
        .probe_every(Duration::from_secs(10))
        .window(Duration::from_millis(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    let limiter = ConcurrencyLimiter::new("t").adaptive(limit.clone());
    assert_eq!(limit.current(), 2, "the minimum latency is measured first, at `min`");
    for _ in 0..5 {
        requests(&limiter, &clock, 2, Duration::from_millis(10), Outcome::Succeeded);
    }
    assert_eq!((limit.current(), limit.min_latency()), (15, Some(Duration::from_millis(10))));
    // A fifth of the requests fail (more than 5 %): times 0.9.
    for i in 0..10 {
        let outcome = if i % 5 == 0 { Outcome::Failed } else { Outcome::Succeeded };
        requests(&limiter, &clock, 1, Duration::from_millis(10), outcome);
    }
    assert_eq!(limit.current(), 13);
    // Latency at the minimum with the cap in use: it grows by the tolerance, plus one.
    requests(&limiter, &clock, 10, Duration::from_millis(10), Outcome::Succeeded);
    assert_eq!(limit.current(), 16, "13 × 1.2 + 1");
    // Twice the minimum: it shrinks by 1.2 / 2.
    requests(&limiter, &clock, 10, Duration::from_millis(20), Outcome::Succeeded);
    assert_eq!(limit.current(), 9, "16 × 0.6");
    // Ten seconds on (plus the jitter, at most an eighth), the next window starts a probe at
    // `min`; a request started before it does not count in it.
    clock.advance(Duration::from_millis(11_300));
    let mut old = limiter.try_acquire(Key::Int(99)).unwrap();
    for _ in 0..5 {
        requests(&limiter, &clock, 2, Duration::from_millis(100), Outcome::Succeeded);
    }
    assert_eq!(limit.current(), 2, "probing");
    old.record(Outcome::Succeeded); // 500 ms: not the minimum
    drop(old);
    for _ in 0..5 {
        requests(&limiter, &clock, 2, Duration::from_millis(20), Outcome::Succeeded);
    }
    assert_eq!((limit.current(), limit.min_latency()), (9, Some(Duration::from_millis(20))));
}

#[test]
fn an_unrecorded_lease_is_not_a_sample() {
    let clock = ManualClock::new();
    let limit =
        AdaptiveLimit::aimd(Duration::from_millis(50)).initial(10).min_samples(1).clock(clock.clone()).build().unwrap();
    let limiter = ConcurrencyLimiter::new("t").adaptive(limit.clone());
    let cancelled: Vec<ConnectionLease> = (0..10).map(|i| limiter.try_acquire(Key::Int(i)).unwrap()).collect();
    assert_eq!(limiter.try_acquire(Key::Int(10)).unwrap_err().scope, ConcurrencyScope::Adaptive);
    clock.advance(Duration::from_secs(1));
    drop(cancelled);
    assert_eq!((limit.current(), limit.latency()), (10, None));
    requests(&limiter, &clock, 5, Duration::from_millis(200), Outcome::Succeeded);
    assert_eq!((limit.current(), limit.latency()), (9, Some(Duration::from_millis(200))));
}

#[test]
fn a_reload_carries_what_was_learned() {
    let clock = ManualClock::new();
    let build = |max: u32| AdaptiveLimit::gradient().bounds(2, max).clock(clock.clone()).build().unwrap();
    let old = build(100);
    let limiter = ConcurrencyLimiter::new("t").adaptive(old.clone());
    for _ in 0..10 {
        requests(&limiter, &clock, 2, Duration::from_millis(10), Outcome::Succeeded);
    }
    assert_eq!(old.current(), 20);
    assert!(build(100).continuing(&old).same(&old), "same settings: the same limit");
    let new = build(10).continuing(&old);
    assert_eq!((new.current(), new.min_latency()), (10, Some(Duration::from_millis(10))), "clamped, no new probe");
    let reloaded = ConcurrencyLimiter::new("t").adaptive(build(100)).keeping_counts_of(&limiter);
    assert!(reloaded.adaptive_limit().unwrap().same(&old));
    // Probing only at startup: a limit carried on does not probe again.
    let once =
        AdaptiveLimit::gradient().bounds(2, 100).probe_every(Duration::ZERO).clock(clock.clone()).build().unwrap();
    let once = once.continuing(&old);
    let limiter = ConcurrencyLimiter::new("t").adaptive(once.clone());
    for _ in 0..30 {
        requests(&limiter, &clock, 10, Duration::from_millis(10), Outcome::Succeeded);
        assert!(once.current() >= 20, "never back to `min`: {}", once.current());
    }
    assert!(once.current() > 20, "grown while in use: {}", once.current());
}

#[test]
fn bad_settings_are_errors_naming_the_setting() {
    let err = |b: AdaptiveBuilder| b.build().unwrap_err().to_string();
    assert!(err(AdaptiveLimit::gradient().bounds(0, 10)).contains("adaptive.min"));
    assert!(err(AdaptiveLimit::gradient().bounds(10, 5)).contains("adaptive.max"));
    assert!(err(AdaptiveLimit::gradient().bounds(1, 5).initial(6)).contains("adaptive.initial"));
    assert_eq!(AdaptiveLimit::gradient().bounds(1, 5).build().unwrap().settings().initial, 5, "the default, bounded");
    assert!(err(AdaptiveLimit::gradient().tolerance(0.5)).contains("adaptive.tolerance"));
    assert!(err(AdaptiveLimit::gradient().backoff(1.5)).contains("adaptive.backoff"));
    assert!(err(AdaptiveLimit::gradient().failure_ratio(f64::NAN)).contains("adaptive.failure_ratio"));
    assert!(err(AdaptiveLimit::gradient().window(Duration::ZERO)).contains("adaptive.window"));
    assert!(err(AdaptiveLimit::aimd(Duration::ZERO)).contains("adaptive.latency_threshold"));
    assert!(err(AdaptiveLimit::aimd(Duration::from_millis(5)).increase(0)).contains("adaptive.increase"));
}

#[test]
fn a_probe_that_sees_nothing_ends_at_its_deadline() {
    // Two sockets held open for good: the startup probe, at `min` = 2, never gets a latency.
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::gradient().bounds(2, 100).initial(30).clock(clock.clone()).build().unwrap();
    let limiter = ConcurrencyLimiter::new("ws").adaptive(limit.clone());
    let _held = [limiter.try_acquire(Key::Int(1)).unwrap(), limiter.try_acquire(Key::Int(2)).unwrap()];
    assert_eq!(limiter.try_acquire(Key::Int(3)).unwrap_err().scope, ConcurrencyScope::Adaptive);
    clock.advance(Duration::from_millis(900));
    assert!(limiter.try_acquire(Key::Int(3)).is_err(), "still probing before 10 windows");
    clock.advance(Duration::from_millis(100));
    // Ten windows on, a refusal ends it: the cap goes back, with no minimum measured.
    assert!(limiter.try_acquire(Key::Int(3)).is_err());
    assert_eq!((limit.current(), limit.min_latency()), (30, None));
    assert!(limiter.try_acquire(Key::Int(3)).is_ok());
}

#[test]
fn a_failing_probe_keeps_the_minimum_and_a_reload_mid_probe_keeps_the_cap() {
    let clock = ManualClock::new();
    let build = |max: u32| {
        AdaptiveLimit::gradient()
            .bounds(2, max)
            .initial(40)
            .probe_every(Duration::from_secs(10))
            .window(Duration::from_millis(1))
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let limit = build(100);
    let limiter = ConcurrencyLimiter::new("t").adaptive(limit.clone());
    for _ in 0..5 {
        requests(&limiter, &clock, 2, Duration::from_millis(10), Outcome::Succeeded);
    }
    assert_eq!((limit.current(), limit.min_latency()), (40, Some(Duration::from_millis(10))));
    // The next probe, entered at the first window after 10 s (+ up to 1/8).
    clock.advance(Duration::from_millis(11_300));
    requests(&limiter, &clock, 10, Duration::from_millis(10), Outcome::Succeeded);
    assert_eq!(limit.current(), 2, "probing");
    // A reload now carries the cap the probe goes back to, not `min`.
    let reloaded = build(90).continuing(&limit);
    assert_eq!((reloaded.current(), reloaded.min_latency()), (40, Some(Duration::from_millis(10))));
    // The probe's requests fail fast: their 1 ms is not the service's minimum.
    for _ in 0..5 {
        requests(&limiter, &clock, 2, Duration::from_millis(1), Outcome::Failed);
    }
    assert_eq!((limit.current(), limit.min_latency()), (40, Some(Duration::from_millis(10))));
}

#[test]
fn probes_must_leave_room_between_them() {
    let err = AdaptiveLimit::gradient().probe_every(Duration::from_millis(500)).build().unwrap_err().to_string();
    assert!(err.contains("adaptive.probe_every") && err.contains("10 windows"), "{err}");
    assert!(AdaptiveLimit::gradient().probe_every(Duration::from_secs(1)).build().is_ok());
    let err = AdaptiveLimit::gradient().min_samples(1_000_000).build().unwrap_err().to_string();
    assert!(err.contains("adaptive.min_samples"), "{err}");
}
