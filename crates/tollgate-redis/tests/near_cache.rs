//! The near cache (issue 23, item 2) against a real `redis-server` (see `support`): refusals
//! answered locally are the refusals Redis gives, a flood from a refused client costs about one
//! round trip, a refused client is admitted again when Redis would admit it, and two instances
//! each with a cache stay exact. Figures are printed (`cargo test -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, missing_docs)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{RedisServer, raw_command, redis_available};
use tollgate::{
    Algorithm, Check, Decision, Key, KeyKind, LimitSpec, ManualClock, MemoryStore, Policy, Quota, Reason, RequestKeys,
    Snapshot, Store,
};
use tollgate_redis::RedisStore;

const ALGORITHMS: [Algorithm; 4] =
    [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::SlidingLog, Algorithm::FixedWindow];
const START: u64 = 1_700_000_000_000_000_000;

/// The tests run one at a time: some measure time, and busy loops of others would skew it.
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A timeout no loaded test machine reaches: these tests are about what the cache answers, not
/// about Redis being slow (the 250 ms default timed a call out once in a loaded CI run).
const PATIENT: Duration = Duration::from_secs(10);
fn quota(text: &str) -> Quota {
    text.parse().unwrap()
}

fn spec(policy: &str, name: &str, algorithm: Algorithm) -> LimitSpec {
    LimitSpec { name: name.into(), policy: policy.into(), algorithm }
}

/// `EVALSHA` calls the server has run: every decision and block is one.
fn evalsha_calls(port: u16) -> u64 {
    let info = raw_command(port, &["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn ip_keys(ip: &str) -> RequestKeys<'static> {
    RequestKeys { ip: Some(ip.parse().unwrap()), ..RequestKeys::default() }
}

/// A small deterministic generator, so every run replays the same sequence.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// On a test clock, every answer of the store with its near cache is the in-memory reference's
/// (which the conformance suite holds Redis to), for all four algorithms: single checks of cost 1
/// and 2, two-limit batches (the second limit rejecting or delaying), and penalty blocks, at
/// random times. The only difference allowed is
/// the one documented: in a batch the cache refused, the limits it was not asked about (and that
/// pass) are `Snapshot::EMPTY`. Then a refused key is refused from the cache one nanosecond
/// before its retry-after ends and admitted by Redis at that instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_refusals_are_the_refusals_redis_gives() {
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let base = RedisStore::builder(server.url()).timeout(PATIENT).prefix("near").build().await.unwrap();
    let keys = [Key::Int(1), Key::Text("k2"), Key::Ip([10, 0, 0, 3].into())];
    let quotas = [quota("3/s"), quota("5/2s burst 2"), quota("4/500ms")];
    for algorithm in ALGORITHMS {
        let clock = ManualClock::at(START);
        let store = base.with_clock(clock.clone());
        let reference = MemoryStore::builder().clock(clock.clone()).build();
        let policy = format!("exact-{}", algorithm.name());
        let a = (
            store.register(&spec(&policy, "a", algorithm)).unwrap(),
            reference.register(&spec(&policy, "a", algorithm)).unwrap(),
        );
        let b = (
            store.register(&spec(&policy, "b", algorithm)).unwrap(),
            reference.register(&spec(&policy, "b", algorithm)).unwrap(),
        );
        let global = quota("40/s");
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut hits = 0;
        for step in 0..500 {
            clock.advance(Duration::from_millis(rng.next(4) * rng.next(50)));
            let k = rng.next(3) as usize;
            let op = rng.next(20);
            if op == 0 {
                let d = Duration::from_millis(rng.next(1500) + 1);
                store.block(&a.0, keys[k], d).await.unwrap();
                reference.block(&a.1, keys[k], d).await.unwrap();
                continue;
            }
            let cost = if op < 3 { 2 } else { 1 };
            let mut items = vec![(&a, keys[k], quotas[k], Duration::ZERO)];
            if op >= 14 {
                items.push((&b, Key::Global, global, Duration::ZERO));
            } else if (3..6).contains(&op) {
                // The global limit delays: the batch goes when both have room, maybe later.
                items.push((&b, Key::Global, global, Duration::from_millis(700)));
            }
            let checks: Vec<Check<'_, _>> = items
                .iter()
                .map(|(l, key, q, max_wait)| Check { limit: &l.0, key: *key, quota: *q, cost, max_wait: *max_wait })
                .collect();
            let refs: Vec<Check<'_, _>> = items
                .iter()
                .map(|(l, key, q, max_wait)| Check { limit: &l.1, key: *key, quota: *q, cost, max_wait: *max_wait })
                .collect();
            let (mut out, mut want) = (vec![Snapshot::EMPTY; checks.len()], vec![Snapshot::EMPTY; checks.len()]);
            let before = store.near_cache_stats().unwrap().hits;
            let all = store.check(&checks, &mut out).await.unwrap();
            let hit = store.near_cache_stats().unwrap().hits > before;
            let want_all = reference.check_now(&refs, &mut want);
            let same = out.iter().zip(&want).all(|(o, w)| o == w || (hit && *o == Snapshot::EMPTY && w.allowed));
            assert!(
                all == want_all && same,
                "{policy} step {step} (cache hit: {hit}): store {all} {out:?}, reference {want_all} {want:?}"
            );
            hits += u64::from(hit);
        }
        assert!(hits >= 20, "{policy}: the cache answered only {hits} of 500 checks");

        // To the nanosecond: refused from the cache until the retry-after ends, then Redis admits.
        let key = Key::Text("edge");
        let q = quota("2/s");
        let check = |cost| [Check { limit: &a.0, key, quota: q, cost, max_wait: Duration::ZERO }];
        let mut out = [Snapshot::EMPTY];
        while store.check(&check(1), &mut out).await.unwrap() {}
        let retry = out[0].retry_after;
        clock.advance(retry - Duration::from_nanos(1));
        let before = store.near_cache_stats().unwrap();
        assert!(!store.check(&check(1), &mut out).await.unwrap(), "{policy}");
        assert_eq!(out[0].retry_after, Duration::from_nanos(1), "{policy}");
        assert_eq!(store.near_cache_stats().unwrap().hits, before.hits + 1, "{policy}: answered by the cache");
        clock.advance(Duration::from_nanos(1));
        assert!(store.check(&check(1), &mut out).await.unwrap(), "{policy}: admitted when its retry-after ends");
        eprintln!("{policy}: {hits} of 500 random checks answered by the near cache, all as Redis would");
    }
}

/// Policy decisions (status, reason, binding limit, every header number) are the same with and
/// without the near cache, on a test clock, for a two-limit policy with and without a penalty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_decisions_carry_the_same_headers() {
    use tollgate::Limit;
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let cached = RedisStore::builder(server.url()).timeout(PATIENT).prefix("hdr-cached").build().await.unwrap();
    let direct = RedisStore::builder(server.url())
        .timeout(PATIENT)
        .prefix("hdr-direct")
        .near_cache(false)
        .build()
        .await
        .unwrap();
    for penalty in [None, Some(Duration::from_millis(1500))] {
        for algorithm in ALGORITHMS {
            let clock = ManualClock::at(START);
            let policy = |store: &RedisStore| {
                let mut b = Policy::builder(format!("hdr-{}-{penalty:?}", algorithm.name()))
                    .limit(Limit::new("per_ip", quota("3/s")).key(KeyKind::ip()).algorithm(algorithm))
                    .limit(Limit::new("global", quota("1000/s")).algorithm(algorithm));
                if let Some(p) = penalty {
                    b = b.penalty(p);
                }
                b.build_with(store.with_clock(clock.clone())).unwrap()
            };
            let (with, without) = (policy(&cached), policy(&direct));
            let ips = ["192.0.2.1", "192.0.2.2", "2001:db8::1"];
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
            let mut refused = 0;
            for step in 0..300 {
                clock.advance(Duration::from_millis(rng.next(3) * rng.next(60)));
                let keys = ip_keys(ips[rng.next(3) as usize]);
                let (d1, d2): (Decision, Decision) =
                    (with.check(&keys, 1).await.unwrap(), without.check(&keys, 1).await.unwrap());
                assert_eq!(d1, d2, "{} step {step}: with the near cache (left), without (right)", with.name());
                refused += u64::from(!d1.allowed);
            }
            let hits = with.store().near_cache_stats().unwrap().hits;
            assert!(hits > 0 && refused > 0, "{}: {hits} hits, {refused} refusals", with.name());
        }
    }
}

/// Runs `tasks` tasks sending `per_task` checks of one refused client each; returns the
/// decisions and how many `EVALSHA` Redis ran meanwhile.
async fn flood(policy: &Policy<RedisStore>, port: u16, tasks: usize, per_task: usize) -> (Vec<Decision>, u64) {
    let before = evalsha_calls(port);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let p = policy.clone();
        handles.push(tokio::spawn(async move {
            let keys = ip_keys("198.51.100.7");
            let mut out = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                out.push(p.check(&keys, 1).await.unwrap());
            }
            out
        }));
    }
    let mut decisions = Vec::new();
    for h in handles {
        decisions.extend(h.await.unwrap());
    }
    (decisions, evalsha_calls(port) - before)
}

/// A flood from one refused client (2,000 requests from 8 tasks, a two-limit policy) costs a
/// handful of round trips with the near cache, instead of one per request; the cached refusals
/// carry the refusal's headers, counting down. With a penalty, the block is remembered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_a_refused_client_costs_a_few_round_trips() {
    use tollgate::Limit;
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let (tasks, per_task) = (8, 250);
    let n = (tasks * per_task) as u64;
    let policy = |store: RedisStore, penalty: Option<Duration>| {
        let mut b = Policy::builder("flood")
            .limit(Limit::new("per_ip", quota("1/10s")).key(KeyKind::ip()))
            .limit(Limit::new("global", quota("100000/s")));
        if let Some(p) = penalty {
            b = b.penalty(p);
        }
        b.build_with(store).unwrap()
    };
    let mut figures = Vec::new();
    for (label, near, penalty) in [
        ("near cache on", true, None),
        ("near cache off", false, None),
        ("near cache on, penalty 5s", true, Some(Duration::from_secs(5))),
    ] {
        let store =
            RedisStore::builder(server.url()).timeout(PATIENT).prefix(label).near_cache(near).build().await.unwrap();
        let p = policy(store.clone(), penalty);
        assert!(p.check(&ip_keys("198.51.100.7"), 1).await.unwrap().allowed);
        let started = Instant::now();
        let (decisions, round_trips) = flood(&p, server.port, tasks, per_task).await;
        let took = started.elapsed();
        let reason = if penalty.is_some() { Reason::Blocked } else { Reason::RateLimited };
        let wait = Duration::from_secs(10); // the longer of the refusal and the penalty
        for d in &decisions {
            assert!(!d.allowed, "{label}: {d:?}");
            let limit = d.limit.as_ref().unwrap();
            assert_eq!((limit.name, limit.snapshot.remaining), ("per_ip", 0), "{label}: {d:?}");
            assert!(limit.snapshot.retry_after <= wait && d.retry_after_secs() >= 1, "{label}: {d:?}");
        }
        // After the first refusal (and, with a penalty, its block), every refusal says so.
        let late = &decisions[decisions.len() - 1];
        assert_eq!(late.reason, reason, "{label}: {late:?}");
        eprintln!("{label}: {n} refused requests -> {round_trips} EVALSHA round trips in {took:?}");
        if near {
            let stats = store.near_cache_stats().unwrap();
            assert!(round_trips <= 2 * tasks as u64 + 2, "{label}: {round_trips} round trips ({stats:?})");
            assert!(stats.hits + round_trips >= n, "{label}: {stats:?}");
        } else {
            assert!(round_trips >= n, "{label}: {round_trips} round trips for {n} requests");
        }
        figures.push(round_trips);
    }
    eprintln!(
        "round trips per refused request: {:.4} with the near cache, {:.4} without",
        figures[0] as f64 / n as f64,
        figures[1] as f64 / n as f64
    );
}

/// What one refused client knocking without pause saw (milliseconds on the local clock).
#[derive(Debug)]
struct Knocks {
    /// How long before `admit_by` (the latest instant at which Redis may admit the client: when
    /// its first refusal's answer arrived, plus the retry-after Redis gave; Redis admits it
    /// between this less one round trip and this) the last refusal answered by the near cache was asked for
    /// (negative: after it, which would be the cache holding the client too long).
    last_hit_ms: Option<f64>,
    /// How long after `admit_by` the admitting check was asked for (negative: before).
    admitted_ms: f64,
    round_trips: u64,
}

fn ms_between(earlier: Instant, later: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

/// One client, refused, keeps knocking in a tight loop until admitted.
async fn knock_until_admitted(store: &RedisStore, port: u16, algorithm: Algorithm, label: &str) -> Knocks {
    let limit = store.register(&spec("readmit", &format!("{label}-{}", algorithm.name()), algorithm)).unwrap();
    let q = quota("2/s");
    let key = Key::Text("knocker");
    let checks = [Check { limit: &limit, key, quota: q, cost: 1, max_wait: Duration::ZERO }];
    let mut out = [Snapshot::EMPTY];
    while store.check(&checks, &mut out).await.unwrap() {}
    let admit_by = Instant::now() + out[0].retry_after;
    let before = evalsha_calls(port);
    let hits = || store.near_cache_stats().map_or(0, |s| s.hits);
    let mut last_hit = None;
    loop {
        tokio::task::yield_now().await;
        let (asked, hits_before) = (Instant::now(), hits());
        if store.check(&checks, &mut out).await.unwrap() {
            return Knocks {
                last_hit_ms: last_hit.map(|h| ms_between(h, admit_by)),
                admitted_ms: ms_between(admit_by, asked),
                round_trips: evalsha_calls(port) - before,
            };
        }
        if hits() > hits_before {
            last_hit = Some(asked);
        }
    }
}

/// Server time: a refused client knocking without pause is never refused by the near cache once
/// Redis may admit it (strictly: every cached refusal was asked for before the first refusal's
/// answer plus its retry-after), and is admitted about as soon as without the cache, for all four
/// algorithms, with a round trip or two instead of thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_is_admitted_when_redis_would_admit_it() {
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let cached = RedisStore::builder(server.url()).timeout(PATIENT).prefix("readmit").build().await.unwrap();
    let direct =
        RedisStore::builder(server.url()).timeout(PATIENT).prefix("readmit").near_cache(false).build().await.unwrap();
    for algorithm in ALGORITHMS {
        let name = algorithm.name();
        // One after the other: the counts of round trips are the server's.
        let with = knock_until_admitted(&cached, server.port, algorithm, "cached").await;
        let without = knock_until_admitted(&direct, server.port, algorithm, "direct").await;
        eprintln!(
            "{name}: last cached refusal {:.3} ms before Redis may admit; admitted {:+.3} ms from then \
             with the near cache ({} round trips), {:+.3} ms without ({} round trips)",
            with.last_hit_ms.unwrap_or(f64::NAN),
            with.admitted_ms,
            with.round_trips,
            without.admitted_ms,
            without.round_trips
        );
        let last_hit = with.last_hit_ms.unwrap_or_else(|| panic!("{name}: the cache answered nothing: {with:?}"));
        assert!(last_hit > 0.0, "{name}: the cache refused after Redis may admit: {with:?}");
        assert!(with.admitted_ms < without.admitted_ms.max(0.0) + 20.0, "{name}: {with:?} vs {without:?}");
        assert!(with.round_trips <= 5 && with.round_trips * 100 < without.round_trips, "{with:?} vs {without:?}");
    }
}

/// Two instances, each with its own near cache, flood one key shared through Redis (GCRA 10/s,
/// burst 1: one admission every 100 ms) for two seconds, beside two instances without the cache
/// flooding another key. Neither cache lets more through (admissions come from Redis only), and
/// neither refuses the key once Redis may admit it: every refusal an instance's cache answered was
/// asked for before that instance's last refusal from Redis (its answer's arrival plus its
/// retry-after) ended — whatever the other instance took meanwhile. They admit as many as the
/// instances without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_near_caches_stay_exact() {
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let run_for = Duration::from_secs(2);
    let q = quota("10/s burst 1");
    let mut pairs = Vec::new();
    for (label, near) in [("cached", true), ("direct", false)] {
        let mut stores = Vec::new();
        for _ in 0..2 {
            stores.push(
                RedisStore::builder(server.url())
                    .timeout(PATIENT)
                    .prefix("pair")
                    .near_cache(near)
                    .build()
                    .await
                    .unwrap(),
            );
        }
        pairs.push((label, stores));
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for (label, stores) in &pairs {
        for (i, store) in stores.iter().enumerate() {
            let (store, label) = (store.clone(), *label);
            handles.push(tokio::spawn(async move {
                let limit = store.register(&spec("pair", "per_key", Algorithm::Gcra)).unwrap();
                let key = Key::Text(label);
                let checks = [Check { limit: &limit, key, quota: q, cost: 1, max_wait: Duration::ZERO }];
                let mut out = [Snapshot::EMPTY];
                let hits = || store.near_cache_stats().map_or(0, |s| s.hits);
                let (mut admissions, mut late_hits, mut hit_count) = (Vec::new(), Vec::new(), 0u64);
                let mut admit_by: Option<Instant> = None;
                while started.elapsed() < run_for {
                    let (asked, before) = (Instant::now(), hits());
                    if store.check(&checks, &mut out).await.unwrap() {
                        admissions.push((Instant::now(), i));
                    } else if hits() > before {
                        hit_count += 1;
                        if admit_by.is_none_or(|by| asked >= by) {
                            late_hits.push(admit_by.map(|by| ms_between(by, asked)));
                        }
                    } else {
                        admit_by = Some(Instant::now() + out[0].retry_after);
                    }
                    tokio::task::yield_now().await;
                }
                (admissions, late_hits, hit_count)
            }));
        }
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    let bound = 1 + (elapsed.as_millis() / 100) as usize;
    let mut counts = Vec::new();
    for ((label, _), pair) in pairs.iter().zip(results.chunks(2)) {
        let mut admissions: Vec<(Instant, usize)> = pair.iter().flat_map(|r| r.0.clone()).collect();
        admissions.sort();
        let by_instance = [0, 1].map(|i| admissions.iter().filter(|(_, j)| *j == i).count());
        let gaps: Vec<f64> = admissions.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64() * 1e3).collect();
        let max_gap = gaps.iter().copied().fold(0.0, f64::max);
        let min_gap = gaps.iter().copied().fold(f64::INFINITY, f64::min);
        let hits: Vec<u64> = pair.iter().map(|r| r.2).collect();
        eprintln!(
            "{label}: {} admitted in {elapsed:.2?} (quota allows {bound}; per instance {by_instance:?}), \
             replies {min_gap:.1}..{max_gap:.1} ms apart, refusals answered by each instance's cache {hits:?}",
            admissions.len(),
        );
        for (i, r) in pair.iter().enumerate() {
            assert!(r.1.is_empty(), "{label} instance {i}: cached refusals after Redis may admit: {:?}", r.1);
        }
        assert!(admissions.len() <= bound, "{label}: more admitted than the quota allows");
        counts.push(admissions.len());
    }
    assert!(results[0].2 > 0 && results[1].2 > 0, "the near caches answered nothing");
    assert!(counts[0] + 2 >= counts[1], "fewer admitted with the near caches: {counts:?}");
}

/// The best of 200 `TIME` round trips: Redis's time minus the local wall clock at the round
/// trip's middle (µs), the round trip (µs), and when it was taken.
async fn sample(conn: &mut redis::aio::MultiplexedConnection) -> (f64, f64, Instant) {
    let mut best: Option<(f64, f64, Instant)> = None;
    for _ in 0..200 {
        let (before, mono) = (SystemTime::now(), Instant::now());
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
        let after = SystemTime::now();
        let local_us = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e6;
        let rtt = local_us(after) - local_us(before);
        let offset = (secs as f64 * 1e6 + micros as f64) - (local_us(before) + local_us(after)) / 2.0;
        if best.is_none_or(|(_, r, _)| rtt < r) {
            best = Some((offset, rtt, mono));
        }
    }
    best.unwrap()
}

/// The offset between this machine's wall clock and Redis's `TIME`, and how their rates differ:
/// the near cache never compares the two (it adds Redis's durations to a local monotonic
/// instant), but this is what a skew would have to be measured against. Printed for the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_offset_to_redis_time_is_measured() {
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (offset, rtt, at) = sample(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (offset2, rtt2, at2) = sample(&mut conn).await;
    let drift_ppm = (offset2 - offset) / (at2 - at).as_secs_f64();
    eprintln!(
        "Redis TIME minus local wall clock: {offset:+.1} µs (round trip {rtt:.1} µs), then {offset2:+.1} µs \
         (round trip {rtt2:.1} µs) {:.2} s later: rates differ by {drift_ppm:+.1} ppm",
        (at2 - at).as_secs_f64()
    );
    // Redis here runs on this machine's clock; TIME has microsecond resolution.
    assert!(offset.abs() <= rtt / 2.0 + 1.0 && offset2.abs() <= rtt2 / 2.0 + 1.0, "{offset} {offset2}");
}

/// The cache holds at most its bound: a flood of distinct refused keys fills it, the rest are
/// refused by Redis as without the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_is_bounded() {
    if !redis_available() {
        return;
    }
    let _one_at_a_time = TIMING.lock().await;
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .timeout(PATIENT)
        .prefix("bound")
        .near_cache_max_keys(32)
        .build()
        .await
        .unwrap();
    let bad = RedisStore::builder(server.url()).near_cache_max_keys(0).build().await.unwrap_err();
    assert!(bad.to_string().contains("near_cache_max_keys"), "{bad}");
    let limit = store.register(&spec("bound", "per_key", Algorithm::Gcra)).unwrap();
    let q = quota("1/min");
    for i in 0..200u64 {
        let checks = [Check { limit: &limit, key: Key::Int(i), quota: q, cost: 1, max_wait: Duration::ZERO }];
        let mut out = [Snapshot::EMPTY];
        assert!(store.check(&checks, &mut out).await.unwrap());
        assert!(!store.check(&checks, &mut out).await.unwrap());
        assert!(!store.check(&checks, &mut out).await.unwrap(), "refused, from the cache or from Redis");
    }
    let stats = store.near_cache_stats().unwrap();
    eprintln!("200 refused keys, bound 32: {stats:?}");
    assert!(stats.entries <= 32 && stats.stored <= 32 + 16, "{stats:?}");
    assert!(stats.not_stored_full >= 150 && stats.hits >= 16, "{stats:?}");
}

/// With the `metrics` feature, every batch the near cache refuses counts once in
/// `tollgate_redis_near_cache_hits_total`.
#[cfg(feature = "metrics")]
#[test]
fn near_cache_hits_are_counted_in_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A runtime on this thread, so that the recorder installed for it sees every hit.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stats = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let store = RedisStore::builder(server.url()).timeout(PATIENT).prefix("metrics").build().await.unwrap();
            let limit = store.register(&spec("metrics", "per_key", Algorithm::Gcra)).unwrap();
            let checks =
                [Check { limit: &limit, key: Key::Int(1), quota: quota("1/min"), cost: 1, max_wait: Duration::ZERO }];
            let mut out = [Snapshot::EMPTY];
            let answers: Vec<bool> = {
                let mut v = Vec::new();
                for _ in 0..5 {
                    v.push(store.check(&checks, &mut out).await.unwrap());
                }
                v
            };
            assert_eq!(answers, [true, false, false, false, false]);
            store.near_cache_stats().unwrap()
        })
    });
    let counted = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| (key.key().name() == tollgate_redis::NEAR_CACHE_HITS).then_some(value));
    assert_eq!(stats.hits, 3, "{stats:?}");
    assert_eq!(counted, Some(DebugValue::Counter(3)));
}
