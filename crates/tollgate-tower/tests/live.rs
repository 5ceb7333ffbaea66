//! A live engine behind the layer, over real sockets: the configuration swaps while many clients
//! are in flight, and no lease is lost nor more admitted than the quotas allow across the switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tollgate::Config;
use tollgate_tower::{LiveEngine, RateLimitLayer};

use common::{get_ok, serve};

/// `/count`: a global fixed window of `quota` per hour; `/slow`: at most `cap` in flight in all.
fn config(quota: u32, cap: u32) -> Config {
    format!(
        "[policies.count]\nlimits = [{{ name = \"all\", quota = \"{quota}/h\", key = \"global\", algorithm = \"fixed_window\" }}]\n\
         [[routes]]\npath = \"/count\"\npolicy = \"count\"\n\
         [[routes]]\npath = \"/slow\"\nkey = \"global\"\nconcurrent_per_key = {cap}\n"
    )
    .parse()
    .unwrap()
}

/// What the handlers saw: requests served on `/count`, and `/slow` requests running now and at
/// most at once; and a switch the `/count` handler runs when it serves its `switch_at`-th request.
#[derive(Default)]
struct Seen {
    counted: AtomicUsize,
    running: AtomicUsize,
    most: AtomicUsize,
    switch_at: AtomicUsize,
    switch: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

async fn server(live: &LiveEngine) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (a, b) = (Arc::clone(&seen), Arc::clone(&seen));
    let app = Router::new()
        .route(
            "/count",
            get(move || async move {
                let n = a.counted.fetch_add(1, Ordering::AcqRel) + 1;
                let switch = (n == a.switch_at.load(Ordering::Acquire)).then(|| a.switch.lock().unwrap().take());
                if let Some(switch) = switch.flatten() {
                    switch();
                }
                "counted"
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                let now = b.running.fetch_add(1, Ordering::AcqRel) + 1;
                b.most.fetch_max(now, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(15)).await;
                b.running.fetch_sub(1, Ordering::AcqRel);
                "slow"
            }),
        )
        .layer(RateLimitLayer::with_engine(live.clone()).axum_body());
    (serve(app).await, seen)
}

/// A client on one kept-alive connection sending GET `path` until `stop`; returns how many were
/// admitted.
async fn client(addr: SocketAddr, path: &'static str, stop: Arc<AtomicBool>) -> usize {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut admitted = 0;
    while !stop.load(Ordering::Acquire) {
        let request = http::Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    admitted
}

fn clients(
    addr: SocketAddr,
    path: &'static str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..n).map(|_| tokio::spawn(client(addr, path, Arc::clone(stop)))).collect()
}

async fn total(tasks: Vec<tokio::task::JoinHandle<usize>>) -> usize {
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap();
    }
    sum
}

async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_switched_under_load_counts_what_was_spent() {
    let live = LiveEngine::from_config(config(200, 4)).unwrap();
    let (addr, seen) = server(&live).await;
    // Tighten to 100/h while 24 clients are in flight, a quarter of the way through 200: the
    // handler serving the 50th request switches, so however the test's own task is scheduled, at
    // most 50 + 23 (decided, not yet served) were spent under the old quota.
    let (switched, changes) = (live.clone(), Arc::new(std::sync::Mutex::new(None)));
    let seen_changes = Arc::clone(&changes);
    seen.switch_at.store(50, Ordering::Release);
    *seen.switch.lock().unwrap() = Some(Box::new(move || {
        *seen_changes.lock().unwrap() = Some(switched.reload(config(100, 4)).unwrap().changed);
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = clients(addr, "/count", 24, &stop);

    until("100 admitted", || seen.counted.load(Ordering::Acquire) >= 100).await;
    assert_eq!(changes.lock().unwrap().as_deref(), Some(&["count/all: 200/1h -> 100/1h".to_owned()][..]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What was admitted before the switch counts against the new quota: 100 in all, the
    // stricter quota — separate counts would have let 50 + 100 through.
    assert_eq!(seen.counted.load(Ordering::Acquire), 100);

    // Loosened back, the rest of 200 and no more.
    live.reload(config(200, 4)).unwrap();
    until("200 admitted", || seen.counted.load(Ordering::Acquire) >= 200).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Release);
    assert_eq!(total(tasks).await, 200);
    assert_eq!(seen.counted.load(Ordering::Acquire), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_in_flight_across_reloads_are_neither_lost_nor_leaked() {
    let live = LiveEngine::from_config(config(1000, 6)).unwrap();
    let (addr, seen) = server(&live).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = clients(addr, "/slow", 16, &stop);

    // Swap the cap between 6 and 3 every few milliseconds while 16 clients hold and ask.
    for round in 0..60 {
        live.reload(config(1000, if round % 2 == 0 { 3 } else { 6 })).unwrap();
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    live.reload(config(1000, 3)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Release);
    let admitted = total(tasks).await;
    assert!(admitted > 100, "the clients were served: {admitted}");
    // Every lease of the old limiters counted against the new: never more in flight than the
    // looser cap (6; separate counts would have allowed 6 + 3).
    let most = seen.most.load(Ordering::Acquire);
    assert!(most <= 6, "{most} in flight at once");
    until("the clients' requests to finish", || seen.running.load(Ordering::Acquire) == 0).await;

    // Every lease came back: exactly the last cap's 3 places are free, no more.
    let replies = futures_util::future::join_all((0..4).map(|_| get_ok(addr, "/slow"))).await;
    let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(ok, 3, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_broken_configuration_leaves_the_served_limits_as_they_were() {
    let live = LiveEngine::from_config(config(2, 4)).unwrap();
    let (addr, _) = server(&live).await;
    assert_eq!(get_ok(addr, "/count").await.status, StatusCode::OK);
    let broken = live.update(|c| c.routes[0].policy = Some("missing".into()));
    assert!(broken.unwrap_err().to_string().contains("missing"));
    assert_eq!(get_ok(addr, "/count").await.status, StatusCode::OK);
    let refused = get_ok(addr, "/count").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-ratelimit-limit"), "2");
    // A runtime change reaches the very next request.
    live.update(|c| c.policies.get_mut("count").unwrap().limits[0].quota = "3/h".parse().unwrap()).unwrap();
    let admitted = get_ok(addr, "/count").await;
    assert_eq!((admitted.status, admitted.header("x-ratelimit-limit")), (StatusCode::OK, "3"));
}
