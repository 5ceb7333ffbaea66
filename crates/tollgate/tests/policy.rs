//! Policies end to end on the in-memory store with a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::Down;
use tollgate::{
    Admission, Algorithm, Error, FailureMode, KeyFields, KeyKind, Limit, ManualClock, MemoryStore, MissingKey,
    OnExceed, Policy, Quota, Reason, RequestKeys,
};

fn q(s: &str) -> Quota {
    s.parse().unwrap()
}

fn store(clock: &ManualClock) -> MemoryStore {
    MemoryStore::builder().clock(clock.clone()).build()
}

fn ip(last: u8) -> RequestKeys<'static> {
    RequestKeys { ip: Some([198, 51, 100, last].into()), ..RequestKeys::default() }
}

#[tokio::test]
async fn refused_requests_consume_nothing_from_other_limits() {
    let clock = ManualClock::new();
    let policy = Policy::builder("api")
        .limit(Limit::new("per_ip", q("2/min")).key(KeyKind::ip()))
        .limit(Limit::new("global", q("5/min")))
        .build_with(store(&clock))
        .unwrap();
    for _ in 0..2 {
        assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
    }
    for _ in 0..10 {
        let d = policy.check(&ip(1), 1).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.limit.as_ref().unwrap().name, "per_ip");
        assert_eq!(d.retry_after_secs(), 30);
    }
    // Three of the global five remain for others.
    for last in 2..5 {
        assert!(policy.check(&ip(last), 1).await.unwrap().allowed);
    }
    let d = policy.check(&ip(9), 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit.unwrap().name, "global");
}

#[tokio::test]
async fn allowed_decisions_report_the_tightest_limit() {
    let policy = Policy::builder("api")
        .limit(Limit::new("loose", q("100/min")).key(KeyKind::ip()))
        .limit(Limit::new("tight", q("3/min")).key(KeyKind::ip()))
        .build()
        .unwrap();
    let d = policy.check(&ip(1), 1).await.unwrap();
    let l = d.limit.unwrap();
    assert_eq!((l.name, l.snapshot.remaining), ("tight", 2));
}

#[tokio::test]
async fn dry_run_reports_but_never_refuses() {
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = refusals.clone();
    let policy = Policy::builder("api")
        .limit(Limit::new("per_ip", q("1/min")).key(KeyKind::ip()))
        .dry_run(true)
        .on_violation(move |_, _| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .build()
        .unwrap();
    assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
    let d = policy.check(&ip(1), 1).await.unwrap();
    assert!(d.allowed && d.dry_run_refused);
    assert_eq!(refusals.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// 2/s per IP, and a minute's block after a violation.
fn login_policy(clock: &ManualClock) -> Policy {
    Policy::builder("login")
        .limit(Limit::new("per_ip", q("2/s")).key(KeyKind::ip()))
        .penalty(Duration::from_secs(60))
        .build_with(store(clock))
        .unwrap()
}

#[tokio::test]
async fn penalty_blocks_after_a_violation_until_it_ends() {
    let clock = ManualClock::new();
    let policy = login_policy(&clock);
    policy.check(&ip(1), 1).await.unwrap();
    policy.check(&ip(1), 1).await.unwrap();
    let d = policy.check(&ip(1), 1).await.unwrap();
    assert_eq!(d.reason, Reason::RateLimited);
    clock.advance(Duration::from_secs(5)); // the quota alone would allow again
    let d = policy.check(&ip(1), 1).await.unwrap();
    assert_eq!((d.allowed, d.reason), (false, Reason::Blocked));
    assert_eq!(d.retry_after_secs(), 55);
    assert!(policy.check(&ip(2), 1).await.unwrap().allowed, "the block is per key");
    clock.advance(Duration::from_secs(55));
    assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
}

#[test]
fn decisions_at_once_match_the_async_ones_penalty_included() {
    let clock = ManualClock::new();
    let policy = login_policy(&clock);
    let now = |keys| policy.try_check_now(&keys, 1).expect("the memory store decides at once").unwrap();
    assert!(now(ip(1)).allowed);
    assert!(now(ip(1)).allowed);
    assert_eq!(now(ip(1)).reason, Reason::RateLimited);
    clock.advance(Duration::from_secs(5));
    let d = now(ip(1));
    assert_eq!((d.allowed, d.reason, d.retry_after_secs()), (false, Reason::Blocked, 55));
    assert!(matches!(policy.try_check_now(&ip(1), 0), Some(Err(Error::InvalidCost { .. }))));
}

#[test]
fn one_limit_decided_at_once_follows_the_missing_key_rule() {
    let name = http::HeaderName::from_static("x-api-key");
    let limit = || Limit::new("k", q("1/min")).key(KeyKind::Header(name.clone()));
    let none = RequestKeys::default();
    let now = |policy: &Policy, keys: &RequestKeys<'_>| policy.try_check_now(keys, 1).unwrap().unwrap();
    let refuse = Policy::builder("a").limit(limit().on_missing_key(MissingKey::Refuse)).build().unwrap();
    let d = now(&refuse, &none);
    assert_eq!((d.allowed, d.reason, d.status().as_u16()), (false, Reason::KeyMissing, 400));
    let skip = Policy::builder("b").limit(limit().on_missing_key(MissingKey::Skip)).build().unwrap();
    for _ in 0..3 {
        let d = now(&skip, &none);
        assert_eq!((d.allowed, d.reason, d.limit), (true, Reason::Allowed, None));
    }
    let shared = Policy::builder("c").limit(limit()).build().unwrap();
    assert!(now(&shared, &none).allowed);
    assert!(!now(&shared, &none).allowed, "keyless requests share one count");
}

#[test]
fn policies_say_which_request_keys_they_read() {
    let header = KeyKind::Header(http::HeaderName::from_static("x-api-key"));
    let policy = |limit: Limit| Policy::builder("p").limit(limit);
    let by_header = policy(Limit::new("k", q("1/s")).key(header)).build().unwrap();
    assert_eq!(by_header.fields(), KeyFields { headers: true, ..KeyFields::NONE });
    let tiered = policy(Limit::new("k", q("1/s")).key(KeyKind::identity()).tier("pro", q("2/s")))
        .limit(Limit::new("global", q("9/s")))
        .build()
        .unwrap();
    assert_eq!(tiered.fields(), KeyFields { ip: true, identity: true, tier: true, ..KeyFields::NONE });
    // Lists and hooks may look at anything.
    let listed = policy(Limit::new("k", q("1/s"))).allow("admin").build().unwrap();
    assert_eq!(listed.fields(), KeyFields::ALL);
    let hooked = policy(Limit::new("k", q("1/s"))).on_violation(|_, _| {}).build().unwrap();
    assert_eq!(hooked.fields(), KeyFields::ALL);
    assert!(policy(Limit::new("k", q("1/s")).key(KeyKind::Route)).build().unwrap().fields().route);
}

#[tokio::test]
async fn allow_and_deny_lists() {
    let policy = Policy::builder("api")
        .limit(Limit::new("per_user", q("1/min")).key(KeyKind::identity()))
        .allow("admin")
        .allow_net("10.0.0.0/8".parse().unwrap())
        .deny_net("203.0.113.0/24".parse().unwrap())
        .build()
        .unwrap();
    let admin = RequestKeys { identity: Some("admin"), ..ip(1) };
    for _ in 0..5 {
        assert_eq!(policy.check(&admin, 1).await.unwrap().reason, Reason::AllowListed);
    }
    let internal = RequestKeys { ip: Some([10, 1, 2, 3].into()), ..RequestKeys::default() };
    assert_eq!(policy.check(&internal, 1).await.unwrap().reason, Reason::AllowListed);
    let bad = RequestKeys { ip: Some([203, 0, 113, 5].into()), ..RequestKeys::default() };
    let d = policy.check(&bad, 1).await.unwrap();
    assert_eq!((d.allowed, d.reason, d.status().as_u16()), (false, Reason::DenyListed, 403));
}

#[tokio::test]
async fn tiers_and_identity_fallback() {
    let policy = Policy::builder("api")
        .limit(Limit::new("per_user", q("1/min")).key(KeyKind::identity()).tier("pro", q("3/min")))
        .build()
        .unwrap();
    let pro = RequestKeys { identity: Some("carol"), tier: Some("pro"), ..ip(1) };
    for _ in 0..3 {
        assert!(policy.check(&pro, 1).await.unwrap().allowed);
    }
    assert!(!policy.check(&pro, 1).await.unwrap().allowed);
    // An anonymous client on the same address is counted by address, separately.
    assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
    assert!(!policy.check(&ip(1), 1).await.unwrap().allowed);
}

#[tokio::test]
async fn missing_keys_follow_the_limit_rule() {
    let name = http::HeaderName::from_static("x-api-key");
    let shared =
        Policy::builder("a").limit(Limit::new("k", q("1/min")).key(KeyKind::Header(name.clone()))).build().unwrap();
    let none = RequestKeys::default();
    assert!(shared.check(&none, 1).await.unwrap().allowed);
    assert!(!shared.check(&none, 1).await.unwrap().allowed, "keyless requests share one count");
    let refuse = Policy::builder("b")
        .limit(Limit::new("k", q("1/min")).key(KeyKind::Header(name)).on_missing_key(MissingKey::Refuse))
        .build()
        .unwrap();
    let d = refuse.check(&none, 1).await.unwrap();
    assert_eq!((d.reason, d.status().as_u16()), (Reason::KeyMissing, 400));
}

#[tokio::test]
async fn costs_that_can_never_pass_are_errors() {
    let policy = Policy::builder("bytes").limit(Limit::new("b", q("1KiB/min"))).build().unwrap();
    assert!(matches!(policy.check(&ip(1), 0).await, Err(Error::InvalidCost { cost: 0, .. })));
    assert!(matches!(policy.check(&ip(1), 2048).await, Err(Error::InvalidCost { capacity: 1024, .. })));
    assert!(policy.check(&ip(1), 1024).await.unwrap().allowed);
}

#[tokio::test]
async fn delay_action_says_how_long_to_wait() {
    let clock = ManualClock::new();
    let policy = Policy::builder("shape")
        .limit(
            Limit::new("per_ip", Quota::per_second(NonZeroU32::new(2).unwrap()))
                .key(KeyKind::ip())
                .on_exceed(OnExceed::Delay { max_wait: Duration::from_secs(1) }),
        )
        .build_with(store(&clock))
        .unwrap();
    let waits: Vec<u128> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            let d = policy.check(&ip(1), 1).await.unwrap();
            v.push(if d.allowed { d.wait.as_millis() } else { u128::MAX });
        }
        v
    };
    assert_eq!(waits, [0, 0, 500, 1000, u128::MAX]);
}

#[tokio::test]
async fn failure_modes() {
    let limit = || Limit::new("per_ip", q("1/min")).key(KeyKind::ip());
    let open = Policy::builder("o").limit(limit()).failure_mode(FailureMode::Open).build_with(Down).unwrap();
    assert!(open.try_check_now(&ip(1), 1).is_none(), "a store with I/O is checked through the future");
    for _ in 0..3 {
        let d = open.check(&ip(1), 1).await.unwrap();
        assert_eq!((d.allowed, d.reason), (true, Reason::StoreUnavailableFailedOpen));
    }
    let closed = Policy::builder("c").limit(limit()).failure_mode(FailureMode::Closed).build_with(Down).unwrap();
    let d = closed.check(&ip(1), 1).await.unwrap();
    assert_eq!((d.allowed, d.status().as_u16()), (false, 503));
    let fallback = Policy::builder("f").limit(limit()).failure_mode(FailureMode::Fallback).build_with(Down).unwrap();
    assert!(fallback.check(&ip(1), 1).await.unwrap().allowed);
    let d = fallback.check(&ip(1), 1).await.unwrap();
    assert_eq!((d.allowed, d.reason), (false, Reason::RateLimited), "the local limiter still limits");
    // The penalty holds through the outage: the local limiter blocks the key that broke its limit.
    let penalized = Policy::builder("p")
        .limit(limit())
        .penalty(Duration::from_secs(600))
        .failure_mode(FailureMode::Fallback)
        .build_with(Down)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(penalized.check(&ip(1), 1).await.unwrap().reason);
    }
    assert_eq!(got, [Reason::Allowed, Reason::RateLimited, Reason::Blocked]);
}

#[tokio::test]
async fn a_flood_of_new_keys_cannot_erase_a_spent_quota() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).shards(1).max_keys(100).build();
    let policy =
        Policy::builder("api").limit(Limit::new("per_ip", q("1/hour")).key(KeyKind::ip())).build_with(store).unwrap();
    assert!(policy.check(&ip(1), 1).await.unwrap().allowed);
    let mut refused_new = 0;
    for i in 0..5_000u32 {
        let k = RequestKeys {
            ip: Some(std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
            ..RequestKeys::default()
        };
        if !policy.check(&k, 1).await.unwrap().allowed {
            refused_new += 1;
        }
    }
    assert!(refused_new > 4_000, "new keys over the cap are refused ({refused_new})");
    assert!(!policy.check(&ip(1), 1).await.unwrap().allowed, "the spent key is still limited");
    clock.advance(Duration::from_secs(3600));
    assert!(
        policy
            .check(&RequestKeys { ip: Some([10, 9, 9, 9].into()), ..RequestKeys::default() }, 1)
            .await
            .unwrap()
            .allowed,
        "idle keys are evicted to make room"
    );
}

/// A policy of one of several shapes, on its own store and clock: one limit (what
/// `try_admit_now` answers without the batch machinery, a GCRA limit straight from the memory
/// store's table) with each rule that changes a decision, another algorithm, a store too small for
/// the keys, or more than one limit, or an allow- or deny-list (what it answers through
/// `try_check_now`).
fn shaped(shape: u8, clock: &ManualClock) -> Policy {
    let per_ip = || Limit::new("per_ip", q("3/s burst 4")).key(KeyKind::ip());
    let by_route = |missing| per_ip().key(KeyKind::Route).on_missing_key(missing);
    let net = || "198.51.100.0/31".parse().unwrap();
    let builder = Policy::builder("api");
    let builder = match shape {
        0 => builder.limit(per_ip()),
        1 => builder.limit(per_ip().on_exceed(OnExceed::Delay { max_wait: Duration::from_millis(500) })),
        2 => builder.limit(per_ip()).penalty(Duration::from_secs(2)),
        3 => builder.limit(per_ip()).dry_run(true),
        4 => builder.limit(per_ip()).penalty(Duration::from_secs(2)).dry_run(true),
        5 => builder.limit(by_route(MissingKey::Refuse)),
        6 => builder.limit(by_route(MissingKey::Skip)),
        7 => builder.limit(by_route(MissingKey::Shared)),
        8 => builder.limit(per_ip().override_key(std::net::IpAddr::from([198, 51, 100, 1]), q("1/s"))),
        9 => builder.limit(per_ip()).limit(Limit::new("global", q("5/s"))),
        10 => builder.limit(per_ip()).allow_net(net()),
        11 => builder.limit(per_ip()).deny_net(net()),
        12 => builder.limit(per_ip().tier("pro", q("1/s"))),
        13 => builder.limit(per_ip().algorithm(Algorithm::SlidingWindow)),
        14 => builder.limit(per_ip().algorithm(Algorithm::FixedWindow)),
        _ => {
            // A store filled with busy keys (its one shard holds 18): new keys are refused as
            // the store is full until those fall idle, over a second later.
            let small = MemoryStore::builder().clock(clock.clone()).shards(1).max_keys(2).build();
            let policy = builder.limit(per_ip()).build_with(small).unwrap();
            for last in 100..120 {
                policy.try_check_now(&ip(last), 4).expect("the memory store decides at once").unwrap();
            }
            let new = policy.try_check_now(&ip(99), 1).expect("the memory store decides at once").unwrap();
            assert_eq!((new.allowed, new.retry_after_secs()), (false, 1), "the store is full");
            return policy;
        }
    };
    builder.build_with(store(clock)).unwrap()
}

proptest::proptest! {
    /// `try_admit_now` reaches the decision `try_check_now` reaches, request for request: twin
    /// policies on twin clocks, one asked each way. Admitted exactly when the decision allows,
    /// with its wait and (when asked for) its header numbers; refused with the whole decision.
    #[test]
    fn admissions_are_the_decisions_of_try_check_now(
        shape in 0u8..16,
        with_headers: bool,
        requests in proptest::collection::vec((0u8..8, 1u32..6, 0u64..700), 1..60),
    ) {
        let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
        let (a, b) = (shaped(shape, &clock_a), shaped(shape, &clock_b));
        for (last, cost, advance_ms) in requests {
            // Odd addresses are on the `pro` tier (shape 12 gives it its own quota).
            let keys = RequestKeys { tier: (last % 2 == 1).then_some("pro"), ..ip(last) };
            let decided = a.try_check_now(&keys, cost).expect("the memory store decides at once");
            let admitted = b.try_admit_now(&keys, cost, with_headers, |d| d).expect("the memory store decides at once");
            match (decided, admitted) {
                (Ok(d), Ok(Admission::Admitted(admitted))) => {
                    proptest::prop_assert!(d.allowed, "admitted, but {d:?}");
                    proptest::prop_assert_eq!(admitted.wait, d.wait);
                    proptest::prop_assert_eq!(admitted.headers, d.limit_headers().filter(|_| with_headers));
                }
                (Ok(d), Ok(Admission::Refused(refused))) => {
                    proptest::prop_assert!(!d.allowed);
                    proptest::prop_assert_eq!(refused, d);
                }
                (Err(e), Err(f)) => proptest::prop_assert_eq!(e.to_string(), f.to_string()),
                (d, admission) => proptest::prop_assert!(false, "{d:?} against {admission:?}"),
            }
            clock_a.advance(Duration::from_millis(advance_ms));
            clock_b.advance(Duration::from_millis(advance_ms));
        }
    }
}

#[tokio::test]
async fn listed_ip_addresses_match_the_clients_address_not_the_limits_key() {
    // An IPv6 client's per-IP key is its /64 network; the lists name the client itself.
    let (denied, allowed, neighbour) = ("2001:db8::5", "2001:db8:1::7", "2001:db8::6");
    let policy = Policy::builder("api")
        .limit(Limit::new("per_ip", q("1/min")).key(KeyKind::ip()))
        .deny(tollgate::OwnedKey::Ip(denied.parse().unwrap()))
        .allow(tollgate::OwnedKey::Ip(allowed.parse().unwrap()))
        .deny(tollgate::OwnedKey::Ip("::ffff:192.0.2.1".parse().unwrap()))
        .deny_net("::ffff:198.51.100.0/120".parse().unwrap())
        .build()
        .unwrap();
    let keys = |ip: &str| RequestKeys { ip: Some(ip.parse().unwrap()), ..RequestKeys::default() };
    let d = policy.check(&keys(denied), 1).await.unwrap();
    assert_eq!((d.allowed, d.reason), (false, Reason::DenyListed));
    assert!(policy.check(&keys(neighbour), 1).await.unwrap().allowed, "only the address is denied");
    for _ in 0..3 {
        assert!(policy.check(&keys(allowed), 1).await.unwrap().allowed);
    }
    assert!(!policy.check(&keys("192.0.2.1"), 1).await.unwrap().allowed, "an IPv4-mapped address is its IPv4 address");
    assert!(!policy.check(&keys("198.51.100.9"), 1).await.unwrap().allowed, "and a mapped network its IPv4 network");
}

#[tokio::test]
async fn a_full_store_does_not_penalize_the_new_keys_it_refuses() {
    // A new key the store is too full of busy keys to track is refused for a second (OnFull::Deny):
    // it broke no limit, so the penalty must not block it (it was blocked for the whole penalty).
    let clock = ManualClock::at(1_000_000_000);
    let store = MemoryStore::builder().clock(clock.clone()).shards(1).max_keys(2).build();
    let policy = Policy::builder("api")
        .limit(Limit::new("per_ip", q("1/s")).key(KeyKind::ip()))
        .penalty(Duration::from_secs(600))
        .build_with(store)
        .unwrap();
    for last in 100..120 {
        policy.check(&ip(last), 1).await.unwrap();
    }
    for sync in [false, true] {
        let new = ip(if sync { 2 } else { 1 });
        let d =
            if sync { policy.try_check_now(&new, 1).unwrap().unwrap() } else { policy.check(&new, 1).await.unwrap() };
        // Its own outcome and status, not a violation's: the server is at its limit.
        assert_eq!((d.allowed, d.reason, d.retry_after_secs()), (false, Reason::KeyTableFull, 1), "the store is full");
        assert_eq!(d.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
    clock.advance(Duration::from_secs(2));
    for n in [1, 2] {
        let d = policy.check(&ip(n), 1).await.unwrap();
        assert!(d.allowed, "10.0.0.{n} broke no limit, yet {:?} for {}s", d.reason, d.retry_after_secs());
    }
    // A key that did break its limit is refused as a violation, then blocked.
    assert_eq!(policy.check(&ip(1), 1).await.unwrap().reason, Reason::RateLimited);
    clock.advance(Duration::from_secs(2));
    let d = policy.check(&ip(1), 1).await.unwrap();
    assert_eq!(d.reason, Reason::Blocked);
}
