//! With `tollgate-redis`: two instances sharing one real `redis-server` admit together exactly
//! what one quota allows, and share one count of open WebSocket connections. With `CI` set, a
//! missing `redis-server` fails the test instead of skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "../../tollgate-redis/tests/support/mod.rs"]
mod redis_support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tollgate::config::Config;
use tollgate_redis::RedisStore;
use tollgate_warp::{LimitedWs, RateLimit};
use warp::Filter;

const CONFIG: &str = r#"
[policies.per_ip]
limits = [{ name = "per_ip", quota = "10/hour", key = "ip" }]

[[routes]]
path = "/hello"
policy = "per_ip"

[[websocket]]
path = "/ws"
concurrent_per_key = 2
messages = "100/10s"
"#;

async fn instance(config: &Config, store: &RedisStore) -> SocketAddr {
    let limit = RateLimit::from_config_with_leases(config, store, store).unwrap();
    let hello = warp::path!("hello").map(|| "hello");
    let ws = warp::path!("ws")
        .and(tollgate_warp::ws())
        .map(|ws: LimitedWs| ws.on_upgrade(|mut socket| async move { while let Some(Ok(_)) = socket.next().await {} }));
    support::start(&limit, hello.or(ws)).await
}

#[tokio::test]
async fn two_instances_share_one_quota_and_one_count_of_sockets_through_redis() {
    if !redis_support::redis_available() {
        return;
    }
    let server = redis_support::RedisServer::start();
    let config: Config = CONFIG.parse().unwrap();
    let store = RedisStore::builder(server.url()).prefix("tollgate-warp-test").build().await.unwrap();
    let a = instance(&config, &store).await;
    let b = instance(&config, &store).await;

    let (mut passed, mut refused) = ([0u32; 2], 0);
    for i in 0..30 {
        let (which, addr) = if i % 3 == 0 { (0, a) } else { (1, b) };
        let r = support::get_from("127.0.2.1", addr, "/hello", "").await;
        match r.status {
            200 => passed[which] += 1,
            429 => {
                refused += 1;
                assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
                assert!(r.header("retry-after").is_some());
            }
            other => panic!("unexpected status {other}: {r:?}"),
        }
    }
    assert_eq!(passed[0] + passed[1], 10, "both instances together admit exactly the quota: {passed:?}");
    assert!(passed[0] > 0 && passed[1] > 0, "{passed:?}");
    assert_eq!(refused, 20);

    // Two sockets open, one on each instance: a third on either is refused.
    let open = |addr: SocketAddr| async move {
        let stream = support::connect_from("127.0.2.2", addr).await;
        let connect = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream);
        tokio::time::timeout(Duration::from_secs(10), connect).await.unwrap()
    };
    let _one = open(a).await.unwrap();
    let _two = open(b).await.unwrap();
    match open(a).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        Err(other) => panic!("expected 429, got {other}"),
        Ok(_) => panic!("a third socket across the instances was admitted"),
    }
}

#[tokio::test]
async fn a_store_outage_under_fail_closed_is_a_503_response_not_a_500() {
    if !redis_support::redis_available() {
        return;
    }
    let mut server = redis_support::RedisServer::start();
    let config: Config = r#"
[policies.closed]
failure_mode = "closed"
limits = [{ name = "per_ip", quota = "100/min", key = "ip" }]

[[routes]]
path = "/hello"
policy = "closed"
"#
    .parse()
    .unwrap();
    let store = RedisStore::builder(server.url())
        .prefix("tollgate-warp-outage")
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let limit = RateLimit::from_config_with(&config, &store).unwrap();
    let addr = support::start(&limit, warp::path!("hello").map(|| "hello")).await;
    assert_eq!(support::get_from("127.0.2.3", addr, "/hello", "").await.status, 200);

    server.kill();
    let r = support::get_from("127.0.2.3", addr, "/hello", "").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body.contains("error"), "{r:?}");
}
