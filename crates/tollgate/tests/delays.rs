//! The delay action across several limits (issue 22, item 5): a request that waits is counted by
//! every limit of its policy at the time it really goes, so over any interval of those times no
//! limit admits more than its quota. Checked against a reference model of each algorithm's
//! bound, over random policies, quotas, waits, keys and arrival times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use tollgate::{Algorithm, Clock, KeyKind, Limit, ManualClock, MemoryStore, OnExceed, Policy, Quota, RequestKeys};

fn ip(last: u8) -> RequestKeys<'static> {
    RequestKeys { ip: Some([198, 51, 100, last].into()), ..RequestKeys::default() }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The example the old documentation gave as a known limitation: a client's `1/s` limit that
/// rejects, behind a global limit that delays. A request the global limit held back 0.9 s used
/// to be counted by the client's limit when it arrived, so the client's next request, 1 s after
/// the first arrived, went 0.1 s after the first went.
#[tokio::test]
async fn a_limit_counts_a_delayed_request_when_it_goes() {
    let clock = ManualClock::new();
    let policy = Policy::builder("api")
        .limit(Limit::new("global", "10/s burst 1".parse().unwrap()).on_exceed(OnExceed::Delay { max_wait: ms(2_000) }))
        .limit(Limit::new("per_ip", "1/s".parse().unwrap()).key(KeyKind::ip()))
        .build_with(MemoryStore::builder().clock(clock.clone()).build())
        .unwrap();
    // Nine other clients fill the global limit's next 0.9 s.
    for last in 2..11 {
        assert!(policy.check(&ip(last), 1).await.unwrap().allowed);
    }
    let first = policy.check(&ip(1), 1).await.unwrap();
    assert!(first.allowed);
    assert_eq!(first.wait, ms(900), "the global limit holds it back");
    clock.advance(ms(1_000));
    let second = policy.check(&ip(1), 1).await.unwrap();
    assert!(!second.allowed, "it would go 0.1 s after the first went, against its 1/s");
    assert_eq!(second.limit.as_ref().unwrap().name, "per_ip");
    assert_eq!(second.retry_after_secs(), 1);
    clock.advance(ms(900));
    let third = policy.check(&ip(1), 1).await.unwrap();
    assert!(third.allowed && third.wait.is_zero(), "1 s after the first went");
}

/// A rejecting limit does not refuse a request only because another limit delays it: it lets it
/// through when it has room at the time the request goes.
#[tokio::test]
async fn a_rejecting_limit_admits_what_another_delays() {
    let clock = ManualClock::new();
    let policy = Policy::builder("api")
        .limit(Limit::new("global", "1/s".parse().unwrap()).on_exceed(OnExceed::Delay { max_wait: ms(5_000) }))
        .limit(Limit::new("per_ip", "10/s burst 1".parse().unwrap()).key(KeyKind::ip()))
        .build_with(MemoryStore::builder().clock(clock.clone()).build())
        .unwrap();
    assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
    for (i, last) in [2, 3, 4].into_iter().enumerate() {
        let d = policy.check(&ip(last), 1).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.wait, ms(1_000 * (i as u64 + 1)));
    }
    // Client 2 again at once: its own limit needs 0.1 s between its requests and refuses any
    // wait, but behind the global limit this one goes 3 s after its first, so it passes.
    let d = policy.check(&ip(2), 1).await.unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.wait, ms(4_000));
}

#[derive(Clone, Debug)]
struct LimitCase {
    algorithm: Algorithm,
    amount: u32,
    period_ms: u64,
    per_ip: bool,
    max_wait_ms: Option<u64>,
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(vec![Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::SlidingLog, Algorithm::FixedWindow])
}

fn limit_case() -> impl Strategy<Value = LimitCase> {
    (algorithm(), 1u32..6, 20u64..1_500, any::<bool>(), prop::option::of(0u64..2_500)).prop_map(
        |(algorithm, amount, period_ms, per_ip, max_wait_ms)| LimitCase {
            algorithm,
            amount,
            period_ms,
            per_ip,
            max_wait_ms,
        },
    )
}

/// (advance in ms, client, cost)
fn ops() -> impl Strategy<Value = Vec<(u64, u8, u32)>> {
    prop::collection::vec((prop_oneof![Just(0u64), 0u64..40, 0u64..600], 0u8..3, 1u32..3), 1..120)
}

/// Whether what went, at the times in `went` (nanoseconds, with costs), keeps within `limit`'s
/// quota: the bound each algorithm promises, over every interval of those times.
fn within(limit: &LimitCase, quota: &Quota, went: &mut [(u64, u64)]) -> Result<(), String> {
    went.sort_unstable();
    let n = u64::from(limit.amount);
    let p = quota.period_nanos();
    match limit.algorithm {
        Algorithm::Gcra => {
            // Over any [a, b]: cost · T <= (b − a) + burst · T.
            let t = quota.emission_interval_nanos();
            let burst = u64::from(quota.burst().get());
            for i in 0..went.len() {
                let mut total = 0;
                for j in i..went.len() {
                    total += went[j].1;
                    let span = went[j].0 - went[i].0;
                    if total * t > span + burst * t {
                        return Err(format!("gcra: {total} between {} and {} ns", went[i].0, went[j].0));
                    }
                }
            }
        }
        Algorithm::SlidingLog => {
            // Any period-long window holds at most the amount.
            for &(x, _) in went.iter() {
                let total: u64 = went.iter().filter(|(y, _)| *y <= x && y + p > x).map(|(_, c)| c).sum();
                if total > n {
                    return Err(format!("sliding log: {total} in the period before {x} ns"));
                }
            }
        }
        _ => {
            // Each aligned window holds at most the amount (the sliding counter's estimate is
            // stricter still, but approximate by design).
            let mut per: HashMap<u64, u64> = HashMap::new();
            for &(x, c) in went.iter() {
                *per.entry(x / p).or_default() += c;
            }
            if let Some((w, total)) = per.iter().find(|(_, total)| **total > n) {
                return Err(format!("{:?}: {total} in window {w}", limit.algorithm));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn no_limit_admits_more_than_its_quota_with_delays(limits in prop::collection::vec(limit_case(), 1..4), ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let clock = ManualClock::new();
        let mut builder = Policy::builder("delays");
        let mut quotas = Vec::new();
        for (i, l) in limits.iter().enumerate() {
            let quota = Quota::new(NonZeroU32::new(l.amount).unwrap(), ms(l.period_ms)).unwrap();
            quotas.push(quota);
            let mut limit = Limit::new(format!("l{i}"), quota).algorithm(l.algorithm);
            if l.per_ip {
                limit = limit.key(KeyKind::ip());
            }
            if let Some(w) = l.max_wait_ms {
                limit = limit.on_exceed(OnExceed::Delay { max_wait: ms(w) });
            }
            builder = builder.limit(limit);
        }
        let policy = builder.build_with(MemoryStore::builder().clock(clock.clone()).build()).unwrap();
        let longest = limits.iter().filter_map(|l| l.max_wait_ms).max().unwrap_or(0);
        // What went, per limit and key: (time it went, cost).
        let mut went: Vec<HashMap<u8, Vec<(u64, u64)>>> = vec![HashMap::new(); limits.len()];
        for (step, (advance, client, cost)) in ops.into_iter().enumerate() {
            clock.advance(ms(advance));
            // A cost over some limit's capacity is an error, not a decision.
            let Ok(d) = rt.block_on(policy.check(&ip(client), cost)) else { continue };
            if !d.allowed {
                continue;
            }
            prop_assert!(d.wait <= ms(longest), "step {}: waited {:?}, longer than any limit allows", step, d.wait);
            let at = clock.now() + u64::try_from(d.wait.as_nanos()).unwrap();
            for (i, l) in limits.iter().enumerate() {
                let key = if l.per_ip { client } else { u8::MAX };
                went[i].entry(key).or_default().push((at, u64::from(cost)));
            }
        }
        for (i, l) in limits.iter().enumerate() {
            for times in went[i].values_mut() {
                if let Err(e) = within(l, &quotas[i], times) {
                    return Err(TestCaseError::fail(format!("limit {i} {l:?}: {e}")));
                }
            }
        }
    }
}
