//! Two instances of the demo sharing one real `redis-server` admit together exactly what one
//! quota allows — requests, and open WebSocket connections — and `REDIS_URL` selects the Redis
//! store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../crates/tollgate-redis/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
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

/// An instance of the demo as `main` runs it with `REDIS_URL`: limits and leases in Redis.
async fn redis_instance(config: &Config, url: &str) -> SocketAddr {
    let store = axum_demo::build_redis_store(config, url).await.expect("connect to the test redis-server");
    let app = axum_demo::app_with_redis(config, &store).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum_demo::serve(listener, app));
    addr
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws(addr: SocketAddr) -> Result<Client, WsError> {
    let connecting = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"));
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("handshake timed out")?;
    Ok(socket)
}

fn refused(result: Result<Client, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a socket"),
    }
}

async fn echoed(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply, Message::text(text));
}

/// A new socket on `addr`, retried until the place given back in the background is free.
async fn ws_when_free(addr: SocketAddr) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ws(addr).await {
            Ok(client) => return client,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "the place never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_instances_share_one_websocket_concurrency_limit_through_redis() {
    if !support::redis_available() {
        return;
    }
    let server = support::RedisServer::start();
    // The built-in limits: concurrent_per_key = 3 per client IP on /ws.
    let config: Config = axum_demo::DEFAULT_CONFIG.parse().unwrap();
    let a = redis_instance(&config, &server.url()).await;
    let b = redis_instance(&config, &server.url()).await;

    let mut a1 = ws(a).await.unwrap();
    let _a2 = ws(a).await.unwrap();
    let mut b1 = ws(b).await.unwrap();
    // Three open across the two instances: a fourth is refused by either.
    assert_eq!(refused(ws(a).await), 429);
    assert_eq!(refused(ws(b).await), 429);
    echoed(&mut a1, "still open").await;
    echoed(&mut b1, "still open").await;

    // Closing a socket on one instance frees a place on the other.
    a1.close(None).await.unwrap();
    while let Some(Ok(_)) = a1.next().await {}
    let mut b2 = ws_when_free(b).await;
    echoed(&mut b2, "hello").await;
    assert_eq!(refused(ws(a).await), 429);
}

#[tokio::test]
async fn websocket_concurrency_falls_back_to_each_instance_when_redis_dies() {
    if !support::redis_available() {
        return;
    }
    let mut server = support::RedisServer::start();
    let config: Config = format!("{}\n[store]\ntimeout = \"200ms\"\n", axum_demo::DEFAULT_CONFIG).parse().unwrap();
    let a = redis_instance(&config, &server.url()).await;
    let _held = ws(a).await.unwrap();
    server.kill();
    // Redis is gone: the upgrade is neither a 500 nor unlimited; each instance counts its own
    // connections, the one opened through Redis included (the connection rate fails open, the
    // policies' default).
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(ws(a).await.unwrap());
    }
    assert_eq!(refused(ws(a).await), 429, "the local fallback caps at concurrent_per_key");
    echoed(&mut open[0], "served without Redis").await;
}

/// `lease_failure_mode = "closed"` in the configuration: once Redis is gone, a route whose
/// in-flight requests are counted there and a WebSocket endpoint whose open connections are
/// answer 503 (with `Retry-After`) instead of falling back to each instance's own count.
#[tokio::test]
async fn leases_configured_to_fail_closed_answer_503_when_redis_dies() {
    if !support::redis_available() {
        return;
    }
    let mut server = support::RedisServer::start();
    let config = format!(
        "{CONFIG}concurrent_per_key = 5\nlease_failure_mode = \"closed\"\n\n[[websocket]]\npath = \"/ws\"\n\
         concurrent_per_key = 3\nlease_failure_mode = \"closed\"\n\n[store]\ntimeout = \"200ms\"\n"
    );
    let config: Config = config.parse().unwrap();
    let a = redis_instance(&config, &server.url()).await;
    assert_eq!(hello(a).await.0, 200);
    let mut open = ws(a).await.unwrap();
    echoed(&mut open, "through Redis").await;
    server.kill();
    let (status, head) = hello(a).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(refused(ws(a).await), 503);
    // The socket opened through Redis is still served.
    echoed(&mut open, "still open").await;
}

/// The core's shared limiter on a real Redis: counted across instances, and each failure mode
/// once Redis is gone.
#[tokio::test]
async fn shared_limiter_counts_in_redis_and_honours_its_failure_mode() {
    use tollgate::{ConcurrencyLimiter, ConcurrencyScope, FailureMode, Key};
    if !support::redis_available() {
        return;
    }
    let mut server = support::RedisServer::start();
    let config: Config = "[store]\ntimeout = \"200ms\"".parse().unwrap();
    let (one, two) = (
        axum_demo::build_redis_store(&config, &server.url()).await.unwrap(),
        axum_demo::build_redis_store(&config, &server.url()).await.unwrap(),
    );
    let limiter = |store| ConcurrencyLimiter::new("shared_test").per_key(1).shared(store);
    let (a, b) = (limiter(one.clone()), limiter(two));
    assert!(!a.decides_at_once());
    let held = a.acquire(Key::Int(7)).await.unwrap();
    assert_eq!((a.in_use(), a.in_use_by(Key::Int(7))), (1, 1), "counted in this process too");
    let denied = b.acquire(Key::Int(7)).await.unwrap_err();
    assert_eq!(denied.scope, ConcurrencyScope::PerKey, "the other instance sees the place taken");
    assert!(b.acquire(Key::Int(8)).await.is_ok());
    drop(held);
    assert_eq!(a.in_use(), 0);

    server.kill();
    let closed = limiter(one.clone()).failure_mode(FailureMode::Closed);
    assert_eq!(closed.acquire(Key::Int(1)).await.unwrap_err().scope, ConcurrencyScope::StoreUnavailable);
    let open = limiter(one.clone()).failure_mode(FailureMode::Open);
    let (_x, _y) = (open.acquire(Key::Int(1)).await.unwrap(), open.acquire(Key::Int(1)).await.unwrap());
    assert_eq!(open.in_use(), 0, "admitted uncounted");
    let fallback = limiter(one).failure_mode(FailureMode::Fallback);
    let _z = fallback.acquire(Key::Int(1)).await.unwrap();
    assert_eq!(fallback.acquire(Key::Int(1)).await.unwrap_err().scope, ConcurrencyScope::PerKey);
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
