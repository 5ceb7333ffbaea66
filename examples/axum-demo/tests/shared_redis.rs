//! Two instances of the demo sharing one real `redis-server` admit together exactly what one
//! quota allows, and `REDIS_URL` selects the Redis store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../crates/tollgate-redis/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::config::Config;

/// `per_ip` of 10 per hour: nothing replenishes during the test, so exactly 10 may pass.
const CONFIG: &str = r#"
[policies.per_ip]
limits = [{ name = "per_ip", quota = "10/hour", key = "ip" }]

[[routes]]
path = "/api/hello"
methods = ["GET"]
policy = "per_ip"
"#;

async fn instance(config: &Config, url: &str) -> SocketAddr {
    let store = axum_demo::build_redis_store(config, url).await.expect("connect to the test redis-server");
    let app = axum_demo::app_with(config, &store).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum_demo::serve(listener, app));
    addr
}

/// One `GET /api/hello` on a fresh connection; the status code and the raw response head.
async fn hello(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn two_instances_share_one_quota_through_redis() {
    if !support::redis_available() {
        return;
    }
    let server = support::RedisServer::start();
    let config: Config = CONFIG.parse().unwrap();
    let a = instance(&config, &server.url()).await;
    let b = instance(&config, &server.url()).await;

    let mut passed = [0u32; 2];
    let mut refused = 0;
    for i in 0..40 {
        let (which, addr) = if i % 3 == 0 { (0, a) } else { (1, b) };
        let (status, head) = hello(addr).await;
        match status {
            200 => passed[which] += 1,
            429 => {
                refused += 1;
                let lower = head.to_ascii_lowercase();
                assert!(lower.contains("retry-after:"), "{head}");
                assert!(lower.contains("x-ratelimit-remaining: 0"), "{head}");
            }
            other => panic!("unexpected status {other}: {head}"),
        }
    }
    assert_eq!(passed[0] + passed[1], 10, "both instances together admit exactly the quota: {passed:?}");
    assert!(passed[0] > 0 && passed[1] > 0, "both instances admitted some: {passed:?}");
    assert_eq!(refused, 30);
}

#[test]
fn redis_url_wins_over_the_config_and_empty_means_memory() {
    let config: Config = "[store]\nkind = \"redis\"\nurl = [\"redis://10.9.9.9:1/\"]".parse().unwrap();
    assert_eq!(
        axum_demo::redis_url(&config, Some("redis://127.0.0.1:7/".into())).as_deref(),
        Some("redis://127.0.0.1:7/")
    );
    assert_eq!(axum_demo::redis_url(&config, None).as_deref(), Some("redis://10.9.9.9:1/"));
    let memory: Config = CONFIG.parse().unwrap();
    assert_eq!(axum_demo::redis_url(&memory, Some(String::new())), None);
    assert_eq!(axum_demo::redis_url(&memory, None), None);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_start_up_error() {
    let config: Config = CONFIG.parse().unwrap();
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}/");
    let Err(err) = axum_demo::build_redis_store(&config, &url).await else { panic!("no Redis listens on {url}") };
    let err = err.to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "the error names the URL: {err}");
}
