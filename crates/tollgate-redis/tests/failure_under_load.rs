//! Failure under load (issue 23, item 4): two instances run a steady load of decisions under the
//! three failure modes (open, closed, fallback) and of concurrency leases, while Redis is killed
//! and restarted (one node) or a cluster master is failed over, gracefully and then by killing
//! it. Each test prints a timeline of what happened (`cargo test -- --nocapture`) and asserts:
//!
//! - nothing panics, and every decision takes at most the store's timeout (plus scheduling slack);
//! - while the data's node is down, `open` admits (`store_unavailable_failed_open`), `closed`
//!   refuses (`store_unavailable`, a 503), and `fallback` admits no more per instance than its
//!   local limiter allows over that time;
//! - once Redis serves again, each instance's decisions come from it again within the breaker's
//!   bound (its cool-down, a timeout, reconnecting);
//! - leases held through the outage count again in Redis (their heartbeats add them back), and
//!   once every holder let go, no lease is left: the counts return to zero.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{RedisCluster, RedisServer, raw_command, redis_available};
use tollgate::{ConcurrencyLimiter, ConnectionLease, FailureMode, Key, KeyKind, Limit, Policy, Reason, RequestKeys};
use tollgate_redis::RedisStore;

/// The policies every instance runs, in the order each load task checks them.
const MODES: [(&str, FailureMode); 3] =
    [("closed", FailureMode::Closed), ("fallback", FailureMode::Fallback), ("open", FailureMode::Open)];
/// The fallback's quota (and Redis's for that policy): small, so that the load exceeds it.
const FALLBACK_QUOTA: &str = "50/s burst 10";
const PREFIX: &str = "load";
/// Limiters: leases churned by the load, and leases held through the whole run.
const CHURN: &str = "churn";
const HELD: &str = "held";

/// Tests that kill servers and measure time, one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// FNV-1a 64, as `tollgate-redis` names its hash tags.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The Redis key of a limiter's set of all its leases.
fn lease_set(limiter: &str) -> String {
    format!("{PREFIX}:{{{:016x}}}:l:{}:{limiter}:g", fnv1a64(limiter.as_bytes()), limiter.len())
}

/// The hash tag of the rate-limit keys of a client IP.
fn client_tag(ip: &str) -> String {
    let mut encoded = Vec::new();
    Key::Ip(ip.parse().unwrap()).encode(&mut encoded);
    format!("{{{:016x}}}", fnv1a64(&encoded))
}

/// Leases of `limiter` alive in the Redis on `port` (not expired by the server's clock), or
/// `None` when it does not answer.
fn live_leases(port: u16, limiter: &str) -> Option<u64> {
    let time = raw_command(port, &["TIME"]).ok()?;
    let parts: Vec<u64> = time.lines().filter_map(|l| l.parse().ok()).collect();
    let [secs, micros] = parts.as_slice() else { return None };
    let now_ms = secs * 1000 + micros / 1000;
    let reply = raw_command(port, &["ZCOUNT", &lease_set(limiter), &now_ms.to_string(), "+inf"]).ok()?;
    reply.trim().strip_prefix(':')?.parse().ok()
}

/// One decision of the load.
#[derive(Clone, Debug)]
struct Record {
    instance: usize,
    mode: usize,
    client: usize,
    started: Duration,
    took: Duration,
    allowed: bool,
    reason: Reason,
}

/// One instance of the application: its store, its policies, its lease limiters.
#[derive(Clone)]
struct Instance {
    store: RedisStore,
    policies: Vec<Policy<RedisStore>>,
    churn: ConcurrencyLimiter,
    held: ConcurrencyLimiter,
}

impl Instance {
    fn new(store: RedisStore) -> Self {
        let policies = MODES
            .iter()
            .map(|(name, mode)| {
                let quota = if *mode == FailureMode::Fallback { FALLBACK_QUOTA } else { "100000/s" };
                Policy::builder(*name)
                    .limit(Limit::new("per_ip", quota.parse().unwrap()).key(KeyKind::ip()))
                    .failure_mode(*mode)
                    .build_with(store.clone())
                    .unwrap()
            })
            .collect();
        let churn = ConcurrencyLimiter::new(CHURN).per_key(2).global(6).shared(store.clone());
        let held = ConcurrencyLimiter::new(HELD).per_key(2).shared(store.clone());
        Self { store, policies, churn, held }
    }
}

/// What happened when, for the timeline.
#[derive(Clone, Default)]
struct Timeline {
    t0: Option<Instant>,
    events: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    fn start() -> Self {
        Self { t0: Some(Instant::now()), events: Arc::default() }
    }

    fn now(&self) -> Duration {
        self.t0.unwrap().elapsed()
    }

    fn at(&self, what: impl Into<String>) -> Duration {
        let t = self.now();
        self.events.lock().unwrap().push((t, what.into()));
        t
    }

    /// Notes what happened at `t` (found afterwards in the records).
    fn note(&self, t: Duration, what: impl Into<String>) {
        self.events.lock().unwrap().push((t, what.into()));
    }

    fn print(&self, title: &str) {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(|e| e.0);
        eprintln!("--- {title}: timeline ---");
        for (t, what) in events {
            eprintln!("{:>8.3}s  {what}", t.as_secs_f64());
        }
    }
}

/// The running load: per instance, one task per client checking every policy in turn, one task
/// churning leases, and a watcher of the circuit breaker.
struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    lease_caps_exceeded: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(instances: &[Instance], clients: &[String], timeline: &Timeline) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::new()));
    let lease_caps_exceeded = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        for (c, ip) in clients.iter().enumerate() {
            let (inst, halt, records, timeline, ip) =
                (inst.clone(), Arc::clone(&stop), Arc::clone(&records), timeline.clone(), ip.clone());
            tasks.push(tokio::spawn(async move {
                let keys = RequestKeys { ip: Some(ip.parse().unwrap()), ..RequestKeys::default() };
                while !halt.load(Ordering::Relaxed) {
                    for (mode, policy) in inst.policies.iter().enumerate() {
                        let started = timeline.now();
                        let d = policy.check(&keys, 1).await.unwrap();
                        let took = timeline.now() - started;
                        let r = Record {
                            instance: i,
                            mode,
                            client: c,
                            started,
                            took,
                            allowed: d.allowed,
                            reason: d.reason,
                        };
                        records.lock().unwrap().push(r);
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        let (churner, halt, exceeded) = (inst.clone(), Arc::clone(&stop), Arc::clone(&lease_caps_exceeded));
        tasks.push(tokio::spawn(async move {
            let inst = churner;
            let mut n = 0u64;
            let mut held: Vec<ConnectionLease> = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                n += 1;
                let key = if n.is_multiple_of(2) { "alice" } else { "bob" };
                if let Ok(lease) = inst.churn.acquire(Key::Text(key)).await {
                    held.push(lease);
                }
                // This process never holds more counted places than its caps, whatever the store.
                let (by_key, all) = (inst.churn.in_use_by(Key::Text(key)), inst.churn.in_use());
                if by_key > 2 || all > 6 {
                    exceeded.lock().unwrap().push(format!("instance {i}: {by_key} for {key}, {all} in all"));
                }
                if held.len() > 3 || (n.is_multiple_of(3) && !held.is_empty()) {
                    drop(held.remove(0));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        let (store, halt, timeline) = (inst.store.clone(), Arc::clone(&stop), timeline.clone());
        tasks.push(tokio::spawn(async move {
            let mut open = false;
            while !halt.load(Ordering::Relaxed) {
                if store.is_breaker_open() != open {
                    open = !open;
                    timeline.at(format!("instance {i}: circuit breaker {}", if open { "opened" } else { "closed" }));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    Load { stop, records, lease_caps_exceeded, tasks }
}

impl Load {
    async fn finish(self) -> (Vec<Record>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        let records = self.records.lock().unwrap().clone();
        let exceeded = self.lease_caps_exceeded.lock().unwrap().clone();
        (records, exceeded)
    }
}

/// Counts of decisions by mode and reason among `records`, as `mode: reason×n ...` lines.
fn summary(records: &[&Record]) -> String {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in records {
        *counts.entry((MODES[r.mode].0, r.reason.as_str())).or_default() += 1;
    }
    let max = records.iter().map(|r| r.took).max().unwrap_or_default();
    let mut s = format!("{} decisions, slowest {:.1} ms:", records.len(), max.as_secs_f64() * 1e3);
    for ((mode, reason), n) in counts {
        s.push_str(&format!(" {mode}/{reason}={n}"));
    }
    s
}

/// The decisions started within `[from, to)`.
fn within(records: &[Record], from: Duration, to: Duration) -> Vec<&Record> {
    records.iter().filter(|r| r.started >= from && r.started + r.took < to).collect()
}

/// While the data of `clients` cannot be reached (`[from, to)`): each mode decided as configured,
/// and the fallback admitted no more per instance and client than its local quota allows.
fn assert_failure_modes(records: &[Record], clients: &[usize], from: Duration, to: Duration, what: &str) {
    let window: Vec<&Record> = within(records, from, to).into_iter().filter(|r| clients.contains(&r.client)).collect();
    assert!(!window.is_empty(), "{what}: no decision while the data was unreachable");
    for r in &window {
        let ok = match MODES[r.mode].1 {
            FailureMode::Open => r.allowed && r.reason == Reason::StoreUnavailableFailedOpen,
            FailureMode::Closed => !r.allowed && r.reason == Reason::StoreUnavailable,
            // The local limiter decides; or the near cache repeats a refusal Redis gave before.
            _ => matches!(r.reason, Reason::Allowed | Reason::RateLimited),
        };
        assert!(ok, "{what}: {r:?}");
    }
    let quota: tollgate::Quota = FALLBACK_QUOTA.parse().unwrap();
    let span = (to - from).as_secs_f64();
    let allowance =
        u64::from(quota.burst().get()) + (span * 1e9 / quota.emission_interval_nanos() as f64).ceil() as u64 + 1;
    let mut admitted: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for r in window.iter().filter(|r| MODES[r.mode].1 == FailureMode::Fallback && r.allowed) {
        *admitted.entry((r.instance, r.client)).or_default() += 1;
    }
    eprintln!(
        "{what}: fallback admitted {admitted:?} (instance, client) in {span:.2} s; its quota allows {allowance} each"
    );
    for (k, n) in admitted {
        assert!(n <= allowance, "{what}: instance {} admitted {n} for client {} (at most {allowance})", k.0, k.1);
    }
}

/// When each instance's decisions for `clients` came from Redis again after `from`: the start of
/// the first `closed` decision that was not a store failure, after which none was.
fn recovered(records: &[Record], instances: usize, clients: &[usize], from: Duration) -> Vec<Option<Duration>> {
    (0..instances)
        .map(|i| {
            let mut mine: Vec<&Record> = records
                .iter()
                .filter(|r| r.instance == i && r.started >= from && clients.contains(&r.client))
                .filter(|r| MODES[r.mode].1 == FailureMode::Closed)
                .collect();
            mine.sort_by_key(|r| r.started);
            let last_failure = mine.iter().rposition(|r| r.reason == Reason::StoreUnavailable);
            let first_ok = match last_failure {
                Some(p) => mine.get(p + 1),
                None => mine.first(),
            };
            first_ok.map(|r| r.started)
        })
        .collect()
}

/// How late past the store's timeout a decision may finish: the scheduling of a loaded test
/// machine (a decision ran 250 ms over once while other builds ran), not the store's doing.
const SLACK: Duration = Duration::from_secs(1);

/// Every decision took at most the timeout plus `slack`, and came from Redis or the failure mode.
fn assert_bounded(records: &[Record], timeout: Duration, slack: Duration) {
    for r in records {
        assert!(r.took <= timeout + slack, "a decision took {:?} (timeout {timeout:?}): {r:?}", r.took);
        let expected = match MODES[r.mode].1 {
            FailureMode::Open => matches!(r.reason, Reason::Allowed | Reason::StoreUnavailableFailedOpen),
            FailureMode::Closed => matches!(r.reason, Reason::Allowed | Reason::StoreUnavailable),
            _ => matches!(r.reason, Reason::Allowed | Reason::RateLimited),
        };
        assert!(expected, "{r:?}");
    }
}

/// Waits until `live()` answers `want` (polling), or `limit` passes; returns when it did.
async fn wait_for(limit: Duration, want: u64, mut live: impl FnMut() -> Option<u64>) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if live() == Some(want) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// One Redis node: killed (SIGKILL) under load, restarted empty two and a half seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_under_load_single_node() {
    if !redis_available() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut server = RedisServer::start();
    let port = server.port;
    let (timeout, threshold, cooldown) = (Duration::from_millis(100), 3, Duration::from_millis(300));
    let lease_ttl = Duration::from_millis(900);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(server.url())
            .prefix(PREFIX)
            .timeout(timeout)
            .breaker(threshold, cooldown)
            .lease_ttl(lease_ttl)
            .build()
            .await
            .unwrap();
        instances.push(Instance::new(store));
    }
    let clients: Vec<String> = ["192.0.2.1", "192.0.2.2"].map(String::from).to_vec();
    let timeline = Timeline::start();
    // Leases taken before the kill and held through it, one per instance.
    let held: Vec<ConnectionLease> = {
        let mut v = Vec::new();
        for inst in &instances {
            v.push(inst.held.acquire(Key::Text("through-the-outage")).await.unwrap());
        }
        v
    };
    assert_eq!(live_leases(port, HELD), Some(2));
    timeline.at("two instances: load started (3 policies x 2 clients each, lease churn), 2 leases held");
    let load = start_load(&instances, &clients, &timeline);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = timeline.at("redis-server killed (SIGKILL)");
    server.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let restarting = timeline.at("restarting redis-server (empty: no persistence)");
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let restarted = timeline.at("redis-server answers PING again");
    let recovered_leases = wait_for(lease_ttl * 3, 2, || live_leases(port, HELD)).await;
    match recovered_leases {
        Some(_) => timeline.at("the 2 held leases count in Redis again (their heartbeats added them back)"),
        None => timeline.at("the held leases did NOT come back"),
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopping = timeline.at("load stopped; held leases dropped");
    let (records, exceeded) = load.finish().await;
    drop(held);
    let zero = wait_for(Duration::from_secs(3), 0, || Some(live_leases(port, HELD)? + live_leases(port, CHURN)?)).await;
    match zero {
        Some(_) => timeline.at("no lease left in Redis (held and churn: 0)"),
        None => timeline.at("leases LEFT in Redis"),
    };

    let recovery = recovered(&records, instances.len(), &[0, 1], restarting);
    for (i, r) in recovery.iter().enumerate() {
        match r {
            Some(t) => timeline.note(*t, format!("instance {i}: decisions come from Redis again")),
            None => timeline.note(stopping, format!("instance {i}: decisions NEVER came back")),
        }
    }
    // The first failure after the kill, per instance.
    for i in 0..instances.len() {
        if let Some(r) = records
            .iter()
            .filter(|r| r.instance == i && r.started >= killed)
            .find(|r| r.reason == Reason::StoreUnavailable)
        {
            let took = r.took.as_secs_f64() * 1e3;
            timeline.note(r.started, format!("instance {i}: first store failure, decided in {took:.1} ms"));
        }
    }
    timeline.print("one Redis node killed and restarted under load");
    eprintln!("before the kill:  {}", summary(&within(&records, Duration::ZERO, killed)));
    eprintln!("Redis down:       {}", summary(&within(&records, killed, restarting)));
    eprintln!("after the restart: {}", summary(&within(&records, restarted, stopping)));

    assert_bounded(&records, timeout, SLACK);
    // From the kill until the restart, nothing answers: every decision is the failure mode's.
    assert_failure_modes(&records, &[0, 1], killed + timeout, restarting, "Redis down");
    let bound = cooldown + timeout + Duration::from_millis(1000);
    for (i, r) in recovery.iter().enumerate() {
        let r = r.unwrap_or_else(|| panic!("instance {i}: decisions never came back to Redis"));
        assert!(
            r.saturating_sub(restarted) <= bound,
            "instance {i}: back {:?} after the restart (bound {bound:?})",
            r - restarted
        );
    }
    assert!(recovered_leases.is_some(), "the leases held through the outage never counted again");
    assert!(zero.is_some(), "leases left in Redis after every holder let go");
    assert!(exceeded.is_empty(), "an instance held more leases than its caps: {exceeded:?}");
    for inst in &instances {
        assert_eq!((inst.churn.in_use(), inst.held.in_use()), (0, 0), "leases left in an instance");
    }
    drop(server);
}

/// A Redis Cluster of three masters with a replica each: a master (the one holding the held
/// leases) is failed over gracefully (`CLUSTER FAILOVER` on its replica), then its successor is
/// killed, and the old master, now its replica, takes over when the cluster notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_under_load_cluster() {
    if !redis_available() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let node_timeout = Duration::from_millis(1000);
    let mut cluster = RedisCluster::start_with_replicas(node_timeout.as_millis() as u64);
    let (timeout, threshold, cooldown) = (Duration::from_millis(200), 5, Duration::from_millis(300));
    let lease_ttl = Duration::from_millis(900);
    let held_slot = cluster.key_slot(&lease_set(HELD));
    let master_of = |cluster: &RedisCluster, slot: u16| {
        cluster.topology().into_iter().find(|n| n.master && !n.failed && n.serves(slot))
    };
    let first = master_of(&cluster, held_slot).unwrap();
    // Two clients: one whose keys live on that master (they fail over), one elsewhere.
    let mut on_it = None;
    let mut elsewhere = None;
    for n in 1..=250u32 {
        let ip = format!("192.0.2.{n}");
        let slot = cluster.key_slot(&client_tag(&ip));
        if first.serves(slot) {
            on_it.get_or_insert(ip);
        } else {
            elsewhere.get_or_insert(ip);
        }
    }
    let clients = vec![on_it.unwrap(), elsewhere.unwrap()];
    let mut instances = Vec::new();
    for i in 0..2 {
        let urls = cluster.urls();
        let store = RedisStore::cluster(if i == 0 { urls } else { urls[3..].to_vec() })
            .prefix(PREFIX)
            .timeout(timeout)
            .breaker(threshold, cooldown)
            .lease_ttl(lease_ttl)
            .build()
            .await
            .unwrap();
        instances.push(Instance::new(store));
    }
    let timeline = Timeline::start();
    let held: Vec<ConnectionLease> = {
        let mut v = Vec::new();
        for inst in &instances {
            v.push(inst.held.acquire(Key::Text("through-the-failover")).await.unwrap());
        }
        v
    };
    let live_held = |cluster: &RedisCluster| {
        let master = master_of(cluster, held_slot)?;
        live_leases(master.port, HELD)
    };
    assert_eq!(live_held(&cluster), Some(2));
    timeline.at(format!(
        "6-node cluster, master :{} serves slot {held_slot} (held leases) and client {} (client 0); \
         load started, 2 leases held",
        first.port, clients[0]
    ));
    let load = start_load(&instances, &clients, &timeline);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 1. Graceful failover: the replica takes over once it has all of its master's writes.
    let replica = cluster.topology().into_iter().find(|n| n.master_id.as_deref() == Some(first.id.as_str())).unwrap();
    let graceful = timeline.at(format!("CLUSTER FAILOVER sent to replica :{}", replica.port));
    assert!(raw_command(replica.port, &["CLUSTER", "FAILOVER"]).unwrap().starts_with("+OK"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while master_of(&cluster, held_slot).is_none_or(|m| m.port != replica.port) {
        assert!(Instant::now() < deadline, "the graceful failover did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timeline.at(format!(":{} is master (graceful failover done)", replica.port));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 2. The new master dies; the old one, now its replica, is promoted after the node timeout.
    let killed = timeline.at(format!("master :{} killed (SIGKILL)", replica.port));
    cluster.node_mut(replica.port).kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last_down = killed;
    loop {
        if master_of(&cluster, held_slot).is_some_and(|m| m.port == first.port) {
            break;
        }
        last_down = timeline.now();
        assert!(Instant::now() < deadline, "the replica was never promoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = timeline.at(format!(":{} promoted to master again", first.port));
    let recovered_leases = wait_for(lease_ttl * 3, 2, || live_held(&cluster)).await;
    match recovered_leases {
        Some(_) => timeline.at("the 2 held leases count on the new master"),
        None => timeline.at("the held leases did NOT come back"),
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopping = timeline.at("load stopped; held leases dropped");
    let (records, exceeded) = load.finish().await;
    drop(held);
    let zero = wait_for(Duration::from_secs(3), 0, || {
        let held = live_held(&cluster)?;
        let churn_master = master_of(&cluster, cluster.key_slot(&lease_set(CHURN)))?;
        Some(held + live_leases(churn_master.port, CHURN)?)
    })
    .await;
    match zero {
        Some(_) => timeline.at("no lease left in the cluster (held and churn: 0)"),
        None => timeline.at("leases LEFT in the cluster"),
    };
    let recovery = recovered(&records, instances.len(), &[0], killed);
    for (i, r) in recovery.iter().enumerate() {
        let what = format!("instance {i}: client 0's decisions come from Redis again");
        match r {
            Some(t) => timeline.note(*t, what),
            None => timeline.note(stopping, format!("{what}: NEVER")),
        }
    }
    timeline.print("a cluster master failed over, gracefully then by a kill, under load");
    let c0: Vec<Record> = records.iter().filter(|r| r.client == 0).cloned().collect();
    let c1: Vec<Record> = records.iter().filter(|r| r.client == 1).cloned().collect();
    eprintln!("graceful failover, client 0: {}", summary(&within(&c0, graceful, killed)));
    eprintln!("graceful failover, client 1: {}", summary(&within(&c1, graceful, killed)));
    eprintln!("master down, client 0:       {}", summary(&within(&c0, killed, promoted)));
    eprintln!("master down, client 1:       {}", summary(&within(&c1, killed, promoted)));
    eprintln!("after promotion, all:        {}", summary(&within(&records, promoted, stopping)));

    assert_bounded(&records, timeout, SLACK);
    // Client 0's keys live on the dead master until its replica is promoted.
    assert_failure_modes(&records, &[0], killed + timeout, last_down, "master down");
    let bound = node_timeout + cooldown + timeout + Duration::from_millis(1500);
    for (i, r) in recovery.iter().enumerate() {
        let r = r.unwrap_or_else(|| panic!("instance {i}: decisions never came back to Redis"));
        assert!(
            r.saturating_sub(promoted) <= bound,
            "instance {i}: back {:?} after the promotion",
            r.saturating_sub(promoted)
        );
    }
    assert!(recovered_leases.is_some(), "the leases held through the failover never counted again");
    assert!(zero.is_some(), "leases left in the cluster after every holder let go");
    assert!(exceeded.is_empty(), "an instance held more leases than its caps: {exceeded:?}");
    for inst in &instances {
        assert_eq!((inst.churn.in_use(), inst.held.in_use()), (0, 0), "leases left in an instance");
    }
}
