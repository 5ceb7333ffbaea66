//! The Redis store against real `redis-server` processes (see `support`): one node and a
//! three-master Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, missing_docs)]

mod support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use support::{RedisCluster, RedisServer, raw_command, redis_available};
use tollgate::stats::{BreakerState, StoreState};
use tollgate::{
    Algorithm, Check, ConcurrencyLimiter, ConcurrencyScope, FailureMode, Key, LeaseStore, LimitSpec, ManualClock,
    Quota, Snapshot, Store, StoreError, testing,
};
use tollgate_redis::{Error, RedisLimit, RedisStore};

fn spec(policy: &str, name: &str, algorithm: Algorithm) -> LimitSpec {
    LimitSpec { name: name.into(), policy: policy.into(), algorithm }
}

fn quota(text: &str) -> Quota {
    text.parse().unwrap()
}

async fn check_one(store: &RedisStore, limit: &RedisLimit, key: Key<'_>, q: Quota) -> Result<Snapshot, StoreError> {
    let checks = [Check { limit, key, quota: q, cost: 1, max_wait: Duration::ZERO }];
    let mut out = [Snapshot::EMPTY];
    store.check(&checks, &mut out).await?;
    Ok(out[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_node() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    // The suite compares every entry of a refused batch with the in-memory store's, including
    // the limits that passed; a batch the near cache refuses was not asked of Redis, so those
    // entries are unknown. The near cache has its own comparison in `tests/near_cache.rs`.
    let base = RedisStore::builder(server.url()).prefix("conf").near_cache(false).build().await.unwrap();
    testing::conformance(|clock: ManualClock| base.with_clock(clock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let base = RedisStore::cluster(cluster.urls()).prefix("conf").near_cache(false).build().await.unwrap();
    testing::conformance(|clock: ManualClock| base.with_clock(clock)).await;
}

/// Production path (the server's `TIME`): two instances share one limit, and a refused batch
/// consumes nothing from the limits that would have passed.
async fn shared_limits_on_server_time(a: RedisStore, b: RedisStore) {
    let (la, lb) = (
        a.register(&spec("shared", "per_key", Algorithm::Gcra)).unwrap(),
        b.register(&spec("shared", "per_key", Algorithm::Gcra)).unwrap(),
    );
    let q = quota("5/min");
    let mut admitted = 0;
    for i in 0..12 {
        let (store, limit) = if i % 2 == 0 { (&a, &la) } else { (&b, &lb) };
        if check_one(store, limit, Key::Text("client"), q).await.unwrap().allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "two instances together admit exactly one quota");

    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::SlidingLog] {
        let tight = a.register(&spec("aon", &format!("tight-{}", algorithm.name()), algorithm)).unwrap();
        let loose = a.register(&spec("aon", &format!("loose-{}", algorithm.name()), algorithm)).unwrap();
        let (qt, ql) = (quota("1/min"), quota("10/min"));
        let user = Key::Text("user:1");
        let checks = [
            Check { limit: &tight, key: user, quota: qt, cost: 1, max_wait: Duration::ZERO },
            Check { limit: &loose, key: Key::Global, quota: ql, cost: 1, max_wait: Duration::ZERO },
        ];
        let mut snaps = [Snapshot::EMPTY; 2];
        assert!(a.check(&checks, &mut snaps).await.unwrap(), "{algorithm:?}: the first batch passes");
        for _ in 0..3 {
            assert!(!a.check(&checks, &mut snaps).await.unwrap(), "{algorithm:?}");
            assert!(!snaps[0].allowed && snaps[0].retry_after > Duration::ZERO, "{algorithm:?}: {snaps:?}");
        }
        let left = check_one(&a, &loose, Key::Global, ql).await.unwrap();
        assert_eq!(left.remaining, 8, "{algorithm:?}: refused batches took nothing: {snaps:?} then {left:?}");
    }

    // A penalty block, on the server's clock.
    let l = a.register(&spec("penalty", "per_key", Algorithm::Gcra)).unwrap();
    a.block(&l, Key::Int(1), Duration::from_millis(300)).await.unwrap();
    let s = check_one(&b, &l, Key::Int(1), quota("100/s")).await.unwrap();
    assert!(!s.allowed && s.blocked && s.retry_after <= Duration::from_millis(300) && s.retry_after > Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(check_one(&b, &l, Key::Int(1), quota("100/s")).await.unwrap().allowed, "the block ends");

    // Leases: the per-key and global sets of a limiter share a slot, so one script counts both.
    let held = a.acquire("ws", Key::Text("x"), Some(1), Some(2)).await.unwrap().unwrap();
    assert_eq!(
        b.acquire("ws", Key::Text("x"), Some(1), Some(2)).await.unwrap().unwrap_err().scope,
        ConcurrencyScope::PerKey
    );
    let _other = b.acquire("ws", Key::Text("y"), Some(1), Some(2)).await.unwrap().unwrap();
    assert_eq!(
        b.acquire("ws", Key::Text("z"), Some(1), Some(2)).await.unwrap().unwrap_err().scope,
        ConcurrencyScope::Global
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_single_node() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let a = RedisStore::connect(server.url()).await.unwrap();
    let b = RedisStore::connect(server.url()).await.unwrap();
    shared_limits_on_server_time(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let a = RedisStore::cluster(cluster.urls()).build().await.unwrap();
    let b = RedisStore::cluster(cluster.urls()[1..].to_vec()).build().await.unwrap();
    shared_limits_on_server_time(a.clone(), b).await;
    // NOSCRIPT on every node: the script is loaded again (on all nodes) and the decision made.
    for node in &cluster.nodes {
        assert!(raw_command(node.port, &["SCRIPT", "FLUSH"]).unwrap().starts_with("+OK"));
    }
    let l = a.register(&spec("flush", "l", Algorithm::SlidingWindow)).unwrap();
    for i in 0..10 {
        assert!(check_one(&a, &l, Key::Int(i), quota("1/min")).await.unwrap().allowed);
    }
}

/// Every key the store writes for hostile client keys stays under the prefix, and its hash tag
/// is the digest (never bytes of the client key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_stay_in_their_namespace() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url()).prefix("ns").build().await.unwrap();
    let l = store.register(&spec("p}{", "n\n:", Algorithm::SlidingLog)).unwrap();
    let hostile: [Key<'_>; 6] = [
        Key::Text("}{x}"),
        Key::Bytes(b"{\xff}\n:*"),
        Key::Text("a\r\nDEL *\r\n"),
        Key::Text(""),
        Key::Bytes(b"\x00\x01"),
        Key::Text("ns:{other}"),
    ];
    for k in hostile {
        assert!(check_one(&store, &l, k, quota("1/min")).await.unwrap().allowed);
        assert!(!check_one(&store, &l, k, quota("1/min")).await.unwrap().allowed, "{k:?} was counted");
        store.block(&l, k, Duration::from_secs(60)).await.unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), hostile.len() * 2, "one state and one block key per client key");
    for k in keys {
        assert!(k.starts_with(b"ns:{"), "{:?}", String::from_utf8_lossy(&k));
        let tag = &k[4..20];
        assert!(tag.iter().all(u8::is_ascii_hexdigit) && k[20] == b'}', "{:?}", String::from_utf8_lossy(&k));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reload_after_script_flush() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let l = store.register(&spec("flush", "l", Algorithm::Gcra)).unwrap();
    assert!(check_one(&store, &l, Key::Int(1), quota("2/min")).await.unwrap().allowed);
    assert!(raw_command(server.port, &["SCRIPT", "FLUSH"]).unwrap().starts_with("+OK"));
    let s = check_one(&store, &l, Key::Int(1), quota("2/min")).await.unwrap();
    assert!(s.allowed && s.remaining == 0, "NOSCRIPT reloaded, and the state kept: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let started = Instant::now();
    let err = RedisStore::builder(url).connect_timeout(Duration::from_millis(500)).build().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")) && !msg.contains("hunter2"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let bad = RedisStore::builder("redis://127.0.0.1/").prefix("a{b}").build().await.unwrap_err();
    assert!(bad.to_string().contains("prefix"), "{bad}");
}

/// Redis killed mid-run: every decision fails with a `StoreError` within the timeout; the breaker
/// then fails fast without the network; once Redis is back on its port, decisions come from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let store = RedisStore::builder(server.url())
        .timeout(timeout)
        .breaker(3, Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let l = store.register(&spec("kill", "l", Algorithm::Gcra)).unwrap();
    let q = quota("1000/s");
    for _ in 0..5 {
        assert!(check_one(&store, &l, Key::Int(1), q).await.unwrap().allowed);
    }
    let health = store.health();
    assert_eq!((health.kind, health.state, health.breaker), ("redis", StoreState::Ok, Some(BreakerState::Closed)));
    server.kill();
    let mut errors = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let err = check_one(&store, &l, Key::Int(1), q).await.unwrap_err();
        assert!(started.elapsed() < timeout + Duration::from_millis(250), "{:?}: {err}", started.elapsed());
        assert!(matches!(err, StoreError::Timeout(_) | StoreError::Unavailable(_)), "{err}");
        errors.push(err.to_string());
    }
    assert!(store.is_breaker_open(), "three failures open the breaker: {errors:?}");
    let health = store.health();
    assert_eq!((health.state, health.breaker), (StoreState::Unavailable, Some(BreakerState::Open)), "{health:?}");
    assert!(health.detail.is_some_and(|d| d.contains("circuit breaker open")));
    let started = Instant::now();
    for _ in 0..100 {
        let err = check_one(&store, &l, Key::Int(1), q).await.unwrap_err();
        assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("circuit breaker")), "{err}");
    }
    assert!(started.elapsed() < Duration::from_millis(100), "open breaker fails fast: {:?}", started.elapsed());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        match check_one(&store, &l, Key::Int(1), q).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "Redis is back but decisions still fail: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(snapshot.allowed && !store.is_breaker_open());
    assert_eq!(store.health().breaker, Some(BreakerState::Closed));
    // The restarted server is empty: this decision came from it (1000 - 1 left).
    assert_eq!(snapshot.remaining, 999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_takes_the_timeout_path() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let store = RedisStore::builder(server.url()).timeout(timeout).build().await.unwrap();
    let l = store.register(&spec("slow", "l", Algorithm::FixedWindow)).unwrap();
    assert!(check_one(&store, &l, Key::Int(1), quota("10/s")).await.unwrap().allowed);
    let port = server.port;
    let sleeper = std::thread::spawn(move || raw_command(port, &["DEBUG", "SLEEP", "0.6"]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = check_one(&store, &l, Key::Int(1), quota("10/s")).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout(t) if t == timeout), "{err}");
    assert!(started.elapsed() < timeout + Duration::from_millis(250), "{:?}", started.elapsed());
    sleeper.join().unwrap().unwrap();
    assert!(check_one(&store, &l, Key::Int(1), quota("10/s")).await.unwrap().allowed, "answers again after the sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_shared_across_instances() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let a = RedisStore::connect(server.url()).await.unwrap();
    let b = RedisStore::connect(server.url()).await.unwrap();
    let k = Key::Text("alice");
    let l1 = a.acquire("ws", k, Some(2), Some(3)).await.unwrap().unwrap();
    let _l2 = b.acquire("ws", k, Some(2), Some(3)).await.unwrap().unwrap();
    let denied = a.acquire("ws", k, Some(2), Some(3)).await.unwrap().unwrap_err();
    assert_eq!((denied.scope, denied.limit), (ConcurrencyScope::PerKey, 2));
    let _l3 = b.acquire("ws", Key::Text("bob"), Some(2), Some(3)).await.unwrap().unwrap();
    let denied = a.acquire("ws", Key::Text("carol"), Some(2), Some(3)).await.unwrap().unwrap_err();
    assert_eq!((denied.scope, denied.limit), (ConcurrencyScope::Global, 3));
    drop(l1); // released in the background
    drop(lease_when_free(&b, "ws", k, (Some(2), Some(3)), "a dropped lease is given back").await);
}

/// A lease of `limiter` for `key` with the `(per_key, global)` caps as soon as one is free
/// (places are given back in the background); `why` says what not getting one within 2 s means.
async fn lease_when_free(
    store: &RedisStore,
    limiter: &str,
    key: Key<'_>,
    (per_key, global): (Option<u32>, Option<u32>),
    why: &str,
) -> tollgate::ConnectionLease {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match store.acquire(limiter, key, per_key, global).await.unwrap() {
            Ok(lease) => return lease,
            Err(refused) => assert!(Instant::now() < deadline, "{why}: {refused:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A holder that stops heartbeating (its process died) loses its lease after the TTL; a live
/// holder keeps its lease past the TTL by heartbeating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_of_a_dead_holder_expires() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let ttl = Duration::from_millis(400);
    let url = server.url();
    // The "crashed instance": its own runtime, shut down with the lease still held.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dead = RedisStore::builder(url).lease_ttl(ttl).build().await.unwrap();
            let lease = dead.acquire("ws", Key::Int(7), Some(1), None).await.unwrap().unwrap();
            Box::leak(Box::new(lease)); // never released: the process "died"
        });
        drop(rt); // heartbeats stop
    })
    .join()
    .unwrap();
    let died = Instant::now();
    let live = RedisStore::builder(server.url()).lease_ttl(ttl).build().await.unwrap();
    assert!(live.acquire("ws", Key::Int(7), Some(1), None).await.unwrap().is_err(), "still held right after");
    let held = loop {
        if let Ok(lease) = live.acquire("ws", Key::Int(7), Some(1), None).await.unwrap() {
            break lease;
        }
        assert!(died.elapsed() < ttl * 4, "the dead holder's lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(died.elapsed() >= ttl / 2, "expired too early: {:?}", died.elapsed());
    // The live holder heartbeats: after three TTLs its lease still counts.
    tokio::time::sleep(ttl * 3).await;
    let other = RedisStore::builder(server.url()).lease_ttl(ttl).build().await.unwrap();
    assert!(other.acquire("ws", Key::Int(7), Some(1), None).await.unwrap().is_err(), "heartbeats keep it");
    drop(held);
}

/// An acquire that times out (Redis stalls) after its `EVALSHA` was sent is still run by Redis;
/// the release sent after it takes the place back at once, instead of leaving it taken for a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_times_out_gives_its_place_back() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url()).timeout(Duration::from_millis(100)).build().await.unwrap();
    let other_instance = RedisStore::connect(server.url()).await.unwrap();
    // The script loaded (as by any earlier request), so the stalled call is the acquire itself.
    drop(store.acquire("stall", Key::Text("warm-up"), None, Some(1)).await.unwrap().unwrap());
    let port = server.port;
    let stall = std::thread::spawn(move || raw_command(port, &["DEBUG", "SLEEP", "0.5"]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let timed_out = store.acquire("stall", Key::Text("alice"), None, Some(1)).await;
    assert!(matches!(timed_out, Err(StoreError::Timeout(_))), "{timed_out:?}");
    stall.join().unwrap().unwrap();
    // Redis ran the acquire, then the release queued behind it: the one place is free.
    let bob = Key::Text("bob");
    drop(lease_when_free(&other_instance, "stall", bob, (None, Some(1)), "the timed-out acquire kept its place").await);
}

/// Redis restarted empty forgets the leases held; their holders' heartbeats add them back, so
/// other instances are refused again, and the holder's own process never exceeds its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_held_through_a_redis_restart_count_again() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    let instance = || async {
        let store = RedisStore::builder(server.url())
            .timeout(Duration::from_millis(150))
            .breaker(2, Duration::from_millis(100))
            .lease_ttl(Duration::from_millis(600))
            .build()
            .await
            .unwrap();
        ConcurrencyLimiter::new("restart").per_key(1).shared(store).failure_mode(FailureMode::Fallback)
    };
    let (a, b) = (instance().await, instance().await);
    let alice = Key::Text("alice");
    let held = a.acquire(alice).await.expect("first place");
    assert_eq!(b.acquire(alice).await.unwrap_err().scope, ConcurrencyScope::PerKey);

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(a.acquire(alice).await.is_err(), "the holder's process exceeded per_key(1)");
        match b.acquire(alice).await {
            // Before the holder's next heartbeat Redis does not know its lease.
            Ok(lease) => drop(lease),
            Err(refused) if refused.scope == ConcurrencyScope::PerKey => break,
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the held lease never counted again after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_quotas_are_refused_clearly() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let l = store.register(&spec("long", "l", Algorithm::Gcra)).unwrap();
    let q = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(90 * 86_400)).unwrap();
    let err = check_one(&store, &l, Key::Int(1), q).await.unwrap_err();
    assert!(err.to_string().contains("2^51"), "{err}");
    assert!(!store.is_breaker_open());
}

/// A quota the scripts cannot run (a period over 2^51 ns: a monthly quota) is refused when the
/// policy is built, naming the limit, instead of failing every check (which a policy failing
/// open would have turned into admitting everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_the_store_cannot_run_is_a_build_error() {
    use tollgate::{Error as CoreError, KeyKind, Limit, Policy};
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let monthly = Limit::new("per_ip", quota("3/30d")).key(KeyKind::ip());
    let err = Policy::builder("monthly").limit(monthly).build_with(store.clone()).unwrap_err();
    let CoreError::Config { field, value, reason } = &err else { panic!("{err:?}") };
    assert_eq!((field.as_str(), value.as_str()), ("policies.monthly.limits[0].quota", "3/720h"), "{err}");
    assert!(reason.contains("2^51"), "{err}");
    // A tier's quota too.
    let tiered = Limit::new("per_ip", quota("3/min")).key(KeyKind::ip()).tier("enterprise", quota("1000/60d"));
    let err = Policy::builder("tiered").limit(tiered).build_with(store.clone()).unwrap_err();
    assert!(err.to_string().contains("1000/1440h"), "{err}");
    assert!(Policy::builder("daily").limit(Limit::new("per_ip", quota("3/day"))).build_with(store).is_ok());
}

/// Redis killed under a policy: each failure mode decides as configured, within the timeout, and
/// decisions come from Redis again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_when_redis_dies() {
    use tollgate::{FailureMode, KeyKind, Limit, Policy, Reason, RequestKeys};
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(150);
    let store = RedisStore::builder(server.url())
        .timeout(timeout)
        .breaker(2, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let policy = |name: &str, mode| {
        Policy::builder(name.to_owned())
            .limit(Limit::new("per_ip", quota("3/min")).key(KeyKind::ip()))
            .failure_mode(mode)
            .build_with(store.clone())
            .unwrap()
    };
    let open = policy("open", FailureMode::Open);
    let closed = policy("closed", FailureMode::Closed);
    let fallback = policy("fallback", FailureMode::Fallback);
    let keys = RequestKeys { ip: Some("192.0.2.1".parse().unwrap()), ..RequestKeys::default() };
    for p in [&open, &closed, &fallback] {
        let d = p.check(&keys, 1).await.unwrap();
        assert!(d.allowed && d.reason == Reason::Allowed, "{d:?}");
    }
    server.kill();
    for round in 0..6 {
        let started = Instant::now();
        let d = open.check(&keys, 1).await.unwrap();
        assert!(d.allowed && d.reason == Reason::StoreUnavailableFailedOpen, "round {round}: {d:?}");
        let d = closed.check(&keys, 1).await.unwrap();
        assert!(!d.allowed && d.reason == Reason::StoreUnavailable, "round {round}: {d:?}");
        // The local limiter counts from zero: 3 per minute, then refused.
        let d = fallback.check(&keys, 1).await.unwrap();
        assert_eq!(d.allowed, round < 3, "round {round}: {d:?}");
        assert!(started.elapsed() < timeout * 3 + Duration::from_millis(100), "{:?}", started.elapsed());
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = closed.check(&keys, 1).await.unwrap();
        if d.reason != Reason::StoreUnavailable {
            assert!(d.allowed, "the restarted Redis is empty: {d:?}");
            break;
        }
        assert!(Instant::now() < deadline, "decisions never came back to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under concurrency, across two instances, the admitted total is exactly what the quota allows:
/// per key, and for a cross-slot batch (global + per key) in a cluster, within both limits.
async fn exact_under_concurrency(a: RedisStore, b: RedisStore) {
    let q = quota("60/min");
    let global_q = quota("100/min");
    let specs = [spec("race", "per_user", Algorithm::Gcra), spec("race", "global", Algorithm::SlidingLog)];
    let mut tasks = Vec::new();
    for t in 0..40u64 {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        let specs = specs.clone();
        tasks.push(tokio::spawn(async move {
            let user = store.register(&specs[0]).unwrap();
            let global = store.register(&specs[1]).unwrap();
            let mut admitted = [0u32; 3];
            for i in 0..20u64 {
                let who = (t + i) % 3; // three users share 60/min each; all share 100/min
                let checks = [
                    Check { limit: &user, key: Key::Int(who), quota: q, cost: 1, max_wait: Duration::ZERO },
                    Check { limit: &global, key: Key::Global, quota: global_q, cost: 1, max_wait: Duration::ZERO },
                ];
                let mut out = [Snapshot::EMPTY; 2];
                if store.check(&checks, &mut out).await.unwrap() {
                    admitted[who as usize] += 1;
                }
            }
            admitted
        }));
    }
    let mut per_user = [0u32; 3];
    for t in tasks {
        for (total, n) in per_user.iter_mut().zip(t.await.unwrap()) {
            *total += n;
        }
    }
    let total: u32 = per_user.iter().sum();
    assert!(per_user.iter().all(|&n| n <= 60), "{per_user:?}");
    assert_eq!(total, 100, "800 attempts over 3 users: the global 100/min binds exactly: {per_user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency_single_node() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let a = RedisStore::connect(server.url()).await.unwrap();
    let b = RedisStore::connect(server.url()).await.unwrap();
    exact_under_concurrency(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let a = RedisStore::cluster(cluster.urls()).timeout(Duration::from_secs(2)).build().await.unwrap();
    let b = RedisStore::cluster(cluster.urls()).timeout(Duration::from_secs(2)).build().await.unwrap();
    exact_under_concurrency(a, b).await;
}

/// A cross-slot batch is refunded one round trip after its commit, with the commit's time. If
/// another instance's check moved the window on in between, the refund must not free room in the
/// new window: this replays the script calls the store makes (commit `m`, another instance's
/// check `c`, refund `r`) with explicit times, so the interleaving is deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_another_check_moved_the_window_on_frees_nothing_there() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/lua/check.lua"));
    let t0 = "1700000000999000000"; // 1 ms before a window ends
    let t1 = "1700000001000500000"; // 0.5 ms into the next one
    // 2 per second, fixed and sliding window.
    for algorithm in ["f", "w"] {
        let state = format!("refund:{{{algorithm}}}:s");
        let block = format!("refund:{{{algorithm}}}:b");
        let call = |mode: &str, now: &str| {
            let mut inv = script.prepare_invoke();
            inv.key(&state).key(&block);
            for a in [mode, now, "60000", "1", algorithm, "1000000000", "500000000", "2", "2", "1", "0"] {
                inv.arg(a);
            }
            inv
        };
        let allowed = |v: &redis::Value| match v {
            redis::Value::Array(items) => items[0] == redis::Value::Int(1),
            other => panic!("unexpected reply {other:?}"),
        };
        assert!(allowed(&call("m", t0).invoke_async::<redis::Value>(&mut conn).await.unwrap()));
        assert!(allowed(&call("c", t1).invoke_async::<redis::Value>(&mut conn).await.unwrap()));
        call("r", t0).invoke_async::<redis::Value>(&mut conn).await.unwrap();
        let mut admitted = 1;
        for _ in 0..3 {
            if allowed(&call("c", t1).invoke_async::<redis::Value>(&mut conn).await.unwrap()) {
                admitted += 1;
            }
        }
        let raw: String = redis::cmd("GET").arg(&state).query_async(&mut conn).await.unwrap();
        assert_eq!(admitted, 2, "{algorithm}: 2 per second admitted {admitted} in one window (state {raw:?})");
        if algorithm == "w" {
            // Just into the window after: the two of the window before still weigh in full.
            let t2 = "1700000002000500000";
            let v = call("c", t2).invoke_async::<redis::Value>(&mut conn).await.unwrap();
            assert!(!allowed(&v), "the sliding window forgot a unit it admitted (state {raw:?})");
        }
    }
}

/// A heartbeat that reaches Redis after its lease's release (it was on its way when the holder
/// let go) does not add the lease back: the release leaves the id among the lately released.
/// Replays the script calls in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_after_the_release_does_not_bring_the_lease_back() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/lua/lease.lua"));
    let call = |op: &str, id: &str| {
        let mut inv = script.prepare_invoke();
        inv.key("late:{t}:k").key("late:{t}:g").key("late:{t}:r");
        for a in [op, id, "30000", "1", "1"] {
            inv.arg(a);
        }
        inv
    };
    let reply = |v: redis::Value| match v {
        redis::Value::Array(items) => items.into_iter().next().unwrap(),
        other => panic!("unexpected reply {other:?}"),
    };
    assert_eq!(reply(call("a", "x").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(1));
    assert_eq!(reply(call("r", "x").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(1));
    assert_eq!(reply(call("h", "x").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(0), "released");
    assert_eq!(reply(call("a", "y").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(1), "the place is free");
    // A lease Redis lost without a release is added back by its heartbeat.
    redis::cmd("DEL").arg("late:{t}:k").arg("late:{t}:g").query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(reply(call("h", "y").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(2));
    assert_eq!(reply(call("a", "z").invoke_async(&mut conn).await.unwrap()), redis::Value::Int(0), "y counts again");
}
