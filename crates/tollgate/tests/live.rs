//! Live limits: reloads and runtime changes keep the state of what did not change, apply what
//! did from the next decision, and refuse a broken configuration whole. Every clock is a manual
//! one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tollgate::engine::{Admit, Engine};
use tollgate::live::{EngineSource, LiveEngine};
use tollgate::request::{RequestHeaders, RequestView};
use tollgate::websocket::{MessageKind, Verdict};
use tollgate::{Config, Key, ManualClock, MemoryStore, Reason};

struct Req {
    path: &'static str,
    peer: IpAddr,
    identity: Option<&'static str>,
    headers: HeaderMap,
}

fn get(path: &'static str) -> Req {
    Req { path, peer: "192.0.2.1".parse().unwrap(), identity: None, headers: HeaderMap::new() }
}

impl Req {
    fn from(mut self, peer: &str) -> Self {
        self.peer = peer.parse().unwrap();
        self
    }
    fn identity(mut self, identity: &'static str) -> Self {
        self.identity = Some(identity);
        self
    }
}

impl RequestView for Req {
    fn method(&self) -> &str {
        "GET"
    }
    fn path(&self) -> &str {
        self.path
    }
    fn peer_ip(&self) -> Option<IpAddr> {
        Some(self.peer)
    }
    fn headers(&self) -> &(dyn RequestHeaders + Sync) {
        &self.headers
    }
    fn is_http1(&self) -> bool {
        true
    }
    fn identity(&self) -> Option<&str> {
        self.identity
    }
}

fn check(engine: &Engine, request: &Req) -> Result<Admit, StatusCode> {
    engine.check_now(engine.limits_for(request), request).map_err(|r| r.status())
}

/// The status `live`'s current engine answers `request` with (200: admitted).
fn status(live: &LiveEngine, request: &Req) -> u16 {
    check(&live.engine(), request).map_or_else(|s| s.as_u16(), |_| 200)
}

/// The reason of the refusal of `request`, if refused by a decision.
fn refusal_reason(live: &LiveEngine, request: &Req) -> Option<Reason> {
    let engine = live.engine();
    let refusal = engine.check_now(engine.limits_for(request), request).err()?;
    refusal.decision().map(|d| d.reason)
}

/// A configuration of one policy `api` on `/api` with the limit `per_ip`.
fn config(limit: &str, extra: &str) -> Config {
    format!("[policies.api]\n{extra}\nlimits = [{{ name = \"per_ip\", key = \"ip\", {limit} }}]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"\n")
        .parse()
        .unwrap()
}

fn live_on(clock: &ManualClock, config: Config) -> LiveEngine {
    LiveEngine::from_config_with(config, MemoryStore::builder().clock(clock.clone()).build()).unwrap()
}

fn admitted(live: &LiveEngine, request: &Req, tries: usize) -> usize {
    (0..tries).filter(|_| status(live, request) == 200).count()
}

#[test]
fn a_reload_keeps_counters_and_applies_a_changed_quota_from_the_next_decision() {
    let clock = ManualClock::new();
    let window = |quota: &str| config(&format!("quota = \"{quota}\", algorithm = \"fixed_window\""), "");
    let live = live_on(&clock, window("5/min"));
    let alice = get("/api");
    assert_eq!(admitted(&live, &alice, 3), 3);

    // 3 spent of 4: one more, then refused.
    let changes = live.reload(window("4/min")).unwrap();
    assert_eq!(changes.changed, ["api/per_ip: 5/1min -> 4/1min"]);
    assert_eq!(admitted(&live, &alice, 5), 1);
    // 4 spent of 10: six more.
    live.reload(window("10/min")).unwrap();
    assert_eq!(admitted(&live, &alice, 10), 6);
    // Another client was never counted.
    assert_eq!(status(&live, &get("/api").from("192.0.2.2")), 200);
    // A reload that changes nothing keeps everything.
    let same = live.reload(window("10/min")).unwrap();
    assert!(same.is_empty(), "{same}");
    assert_eq!(same.unchanged, 1);
    assert_eq!(status(&live, &alice), 429);
    clock.advance(Duration::from_secs(60));
    assert_eq!(admitted(&live, &alice, 12), 10);
}

#[test]
fn gcra_carries_the_time_its_bucket_is_full_again() {
    let clock = ManualClock::new();
    let gcra = |quota: &str| config(&format!("quota = \"{quota}\""), "");
    let live = live_on(&clock, gcra("10/min"));
    let alice = get("/api");
    assert_eq!(admitted(&live, &alice, 3), 3);
    // 3 of 10 spent: 18 s of the minute's bucket. Under 5/min (12 s each) the other 42 s hold 3.
    live.reload(gcra("5/min")).unwrap();
    assert_eq!(admitted(&live, &alice, 10), 3, "no fresh burst: what was spent stays spent");
    // Full (60 s ahead): 12 s later one more, as 5/min replenishes.
    clock.advance(Duration::from_secs(12));
    assert_eq!(admitted(&live, &alice, 10), 1);
}

#[test]
fn a_limit_whose_key_or_algorithm_changed_starts_afresh_and_a_removed_one_is_dropped() {
    let clock = ManualClock::new();
    let two = "[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"2/min\", key = \"ip\" }, \
               { name = \"global\", quota = \"3/min\", key = \"global\" }]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"\n";
    let live = live_on(&clock, two.parse().unwrap());
    let first = live.engine();
    assert_eq!(admitted(&live, &get("/api"), 5), 2);

    let one = config("quota = \"2/min\", algorithm = \"sliding_window\"", "");
    let changes = live.reload(one).unwrap();
    assert_eq!(changes.removed, ["api/global"]);
    assert_eq!(changes.reset, ["api/per_ip (key or algorithm)"]);
    assert_eq!(admitted(&live, &get("/api"), 5), 2, "a sliding window has its own state");
    // The old engine, and with it the removed limit's state, is gone once no request holds it.
    let old = Arc::downgrade(&first);
    drop(first);
    assert!(old.upgrade().is_none());

    // Back again, `global` starts with nothing spent.
    live.reload(two.parse().unwrap()).unwrap();
    assert_eq!(admitted(&live, &get("/api").from("192.0.2.7"), 5), 2);
    assert_eq!(admitted(&live, &get("/api").from("192.0.2.8"), 5), 1, "3 of the global 3");
}

#[test]
fn a_broken_configuration_changes_nothing() {
    let clock = ManualClock::new();
    let live = live_on(&clock, config("quota = \"3/min\"", ""));
    let alice = get("/api");
    assert_eq!(admitted(&live, &alice, 2), 2);
    let before = live.engine();

    let dir = std::env::temp_dir().join(format!("tollgate-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    std::fs::write(&file, "[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"5/fortnight\" }]\n").unwrap();
    let error = live.reload_from_path(&file).unwrap_err().to_string();
    assert!(error.contains("fortnight"), "{error}");
    std::fs::write(&file, "[[routes]]\npath = \"/api\"\npolicy = \"nope\"\n").unwrap();
    let error = live.reload_from_path(&file).unwrap_err().to_string();
    assert!(error.contains("routes[0].policy") && error.contains("nope"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();

    // An edit that breaks the configuration is refused whole.
    let error = live.update(|c| c.routes[0].policy = Some("gone".into())).unwrap_err().to_string();
    assert!(error.contains("gone"), "{error}");
    let error = live.set_key_tier("api", "alice", Some("pro")).unwrap_err().to_string();
    assert!(error.contains("key_tiers") && error.contains("pro"), "{error}");
    // The store cannot change under running limits.
    let error = live.update(|c| c.store.max_keys = Some(10)).unwrap_err().to_string();
    assert!(error.contains("store") && error.contains("restart"), "{error}");

    assert!(Arc::ptr_eq(&before, &live.engine()), "the running engine stayed");
    assert_eq!(live.config().routes[0].policy.as_deref(), Some("api"));
    assert_eq!(admitted(&live, &alice, 3), 1, "its counters too");
}

#[test]
fn leases_survive_a_reload_and_count_against_the_new_cap() {
    let clock = ManualClock::new();
    let cap =
        |n: u32| -> Config { format!("[[routes]]\npath = \"/upload\"\nconcurrent_per_key = {n}\n").parse().unwrap() };
    let live = live_on(&clock, cap(2));
    let upload = get("/upload");
    let held: Vec<Admit> = (0..2).map(|_| check(&live.engine(), &upload).unwrap()).collect();
    assert_eq!(check(&live.engine(), &upload).err(), Some(StatusCode::TOO_MANY_REQUESTS));

    let changes = live.reload(cap(3)).unwrap();
    assert_eq!(changes.changed, ["in_flight:/upload: per key 2, global none -> per key 3, global none"]);
    let third = check(&live.engine(), &upload).unwrap();
    assert_eq!(check(&live.engine(), &upload).err(), Some(StatusCode::TOO_MANY_REQUESTS), "2 old + 1 new of 3");

    // Lower than what is held: nothing is taken away, nothing new until enough come back.
    live.reload(cap(1)).unwrap();
    drop(third);
    let mut held = held.into_iter();
    drop(held.next());
    assert_eq!(check(&live.engine(), &upload).err(), Some(StatusCode::TOO_MANY_REQUESTS), "1 held of 1");
    drop(held.next());
    let again = check(&live.engine(), &upload).unwrap();
    let mut headers = HeaderMap::new();
    drop(again.response.apply(StatusCode::OK, &mut headers));
    assert!(check(&live.engine(), &upload).is_ok(), "the lease came back to the new limiter");
}

#[test]
fn websocket_leases_and_per_key_message_counts_survive_a_reload() {
    let clock = ManualClock::new();
    let ws = |quota: &str| -> Config {
        format!("[[websocket]]\npath = \"/ws\"\nconcurrent_per_key = 1\nkey_messages = \"{quota}\"\n").parse().unwrap()
    };
    let live = live_on(&clock, ws("2/h"));
    let upgrade = get("/ws");
    let first = check(&live.engine(), &upgrade).unwrap();
    let lease = first.response.upgrade().unwrap().clone();
    let mut gate = lease.gate();
    let socket = lease.take().unwrap();
    // One of 2/h: half of the key's hour spent (GCRA).
    assert_eq!(gate.check(MessageKind::Text, 1, None), Verdict::Allow);

    live.reload(ws("3/h")).unwrap();
    // The open socket still holds the only place.
    assert_eq!(check(&live.engine(), &upgrade).err(), Some(StatusCode::TOO_MANY_REQUESTS));
    drop(socket);
    let second = check(&live.engine(), &upgrade).unwrap();
    let mut gate = second.response.upgrade().unwrap().gate();
    // The other half of the hour holds one message of 3/h (20 min each), not a fresh three.
    assert_eq!(gate.check(MessageKind::Text, 1, None), Verdict::Allow);
    assert!(matches!(gate.check(MessageKind::Text, 1, None), Verdict::Drop(_)));
}

#[tokio::test]
async fn penalties_survive_a_reload_and_can_be_lifted() {
    let clock = ManualClock::new();
    let live = live_on(&clock, config("quota = \"1/min\"", "penalty = \"1h\""));
    let alice = get("/api");
    assert_eq!(status(&live, &alice), 200);
    assert_eq!(refusal_reason(&live, &alice), Some(Reason::RateLimited));
    live.reload(config("quota = \"2/min\"", "penalty = \"1h\"")).unwrap();
    clock.advance(Duration::from_secs(120));
    assert_eq!(refusal_reason(&live, &alice), Some(Reason::Blocked), "the block outlived the reload");

    live.lift_penalty("api", "per_ip", Key::Ip("192.0.2.1".parse().unwrap())).await.unwrap();
    assert_eq!(admitted(&live, &alice, 3), 2, "the quota alone decides again");
    let error = live.lift_penalty("nope", "per_ip", Key::Global).await.unwrap_err().to_string();
    assert!(error.contains("nope"), "{error}");
}

#[test]
fn runtime_changes_edit_tiers_key_quotas_and_lists() {
    let clock = ManualClock::new();
    let live = live_on(
        &clock,
        "[policies.api]\nlimits = [{ name = \"per_user\", quota = \"1/h\", key = \"identity\", algorithm = \"fixed_window\", tiers = { pro = \"3/h\" } }]\n\
         [[routes]]\npath = \"/api\"\npolicy = \"api\"\n"
            .parse()
            .unwrap(),
    );
    let alice = || get("/api").identity("alice");
    let bob = || get("/api").identity("bob");
    let changes = live.set_key_tier("api", "alice", Some("pro")).unwrap();
    assert_eq!(changes.changed, ["api/per_user: tiers, key quotas or action"]);
    assert_eq!(admitted(&live, &alice(), 5), 3, "alice is pro");
    assert_eq!(admitted(&live, &bob(), 5), 1);

    live.set_key_quota("api", "per_user", "bob", Some("4/h".parse().unwrap())).unwrap();
    assert_eq!(admitted(&live, &bob(), 5), 3, "1 of bob's own 4 spent");
    assert!(live.set_key_quota("api", "per_ip", "bob", None).unwrap_err().to_string().contains("per_ip"));
    live.set_key_tier("api", "alice", None).unwrap();
    assert_eq!(status(&live, &alice()), 429, "3 spent, 1 allowed");

    let carol = || get("/api").identity("carol").from("198.51.100.7");
    let changes = live.add_denied("api", "198.51.100.0/24").unwrap();
    assert_eq!(changes.policies, ["api"]);
    assert_eq!(status(&live, &carol()), 403);
    live.remove_denied("api", "198.51.100.0/24").unwrap();
    assert_eq!(status(&live, &carol()), 200);
    live.add_allowed("api", "carol").unwrap();
    assert_eq!(admitted(&live, &carol(), 5), 5);
    live.remove_allowed("api", "carol").unwrap();
    assert_eq!(status(&live, &carol()), 429);
    assert!(live.add_allowed("nope", "x").unwrap_err().to_string().contains("nope"));
    assert_eq!(live.config().policies["api"].limits[0].key_quotas.len(), 1);
}

/// Threads deciding while the configuration is replaced over and over: every decision is made by
/// one engine or the next, every lease comes back to the limiter that counts on, and a fixed
/// window never admits more than the looser quota in all, nor anything past the stricter once
/// the threads that loaded the looser engine are done.
#[test]
fn reloads_under_concurrent_decisions_lose_no_lease_and_no_count() {
    let clock = ManualClock::new();
    let text = |quota: u32, cap: u32| -> Config {
        format!(
            "[policies.api]\nlimits = [{{ name = \"all\", quota = \"{quota}/h\", key = \"global\", algorithm = \"fixed_window\" }}]\n\
             [[routes]]\npath = \"/api\"\npolicy = \"api\"\nconcurrent_per_key = {cap}\n"
        )
        .parse()
        .unwrap()
    };
    let live = live_on(&clock, text(400, 4));
    let source = EngineSource::from(live.clone());
    let (admitted, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (source, admitted, stop) = (source.clone(), Arc::clone(&admitted), Arc::clone(&stop));
            std::thread::spawn(move || {
                let request = get("/api").from(&format!("192.0.2.{}", t + 1));
                let mut held = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let engine = source.load();
                    if let Ok(admit) = check(&engine, &request) {
                        admitted.fetch_add(1, Ordering::AcqRel);
                        held.push(admit);
                    }
                    drop(engine);
                    // Each thread holds at most one in-flight lease across the next decision.
                    if held.len() > 1 {
                        held.remove(0);
                    }
                }
            })
        })
        .collect();
    // Switch between a looser and a stricter quota and cap while the threads decide.
    for round in 0..200 {
        let (quota, cap) = if round % 2 == 0 { (300, 2) } else { (400, 4) };
        live.reload(text(quota, cap)).unwrap();
        std::thread::yield_now();
    }
    live.reload(text(300, 2)).unwrap();
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    let admitted = admitted.load(Ordering::Acquire);
    assert!(admitted <= 400, "never more than the looser quota: {admitted}");
    // Every lease came back: the last limiter has all of its places.
    let engine = live.engine();
    let leases: Vec<_> = (0..2).map(|_| check(&engine, &get("/api").from("192.0.2.9"))).collect();
    let counted_out = leases.iter().filter(|l| l.is_err()).count();
    // Refused only by the quota (all spent), never by a lost lease.
    if admitted < 300 {
        assert_eq!(counted_out, 0, "a lease was lost: {admitted} admitted");
    }
    assert!(admitted >= 300 || counted_out == 0);
}
