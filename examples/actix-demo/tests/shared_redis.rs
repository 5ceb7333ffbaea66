//! Two instances of the demo sharing one real `redis-server` admit together exactly what one
//! quota allows — requests, and open WebSocket connections. With `CI` set, a missing
//! `redis-server` fails these tests instead of skipping them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../crates/tollgate-redis/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// An instance as `main` runs it with `REDIS_URL` (limits and leases in Redis), two workers.
async fn instance(config: &Config, url: &str) -> SocketAddr {
    let store = actix_demo::build_redis_store(config, url).await.expect("connect to the test redis-server");
    let limit = actix_demo::limits_with_redis(config, &store).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    actix_web::rt::spawn(actix_demo::serve(listener, limit, None, actix_demo::WORKERS).unwrap());
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

#[actix_web::test]
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
    assert_eq!(passed[0] + passed[1], 10, "both instances (four workers) together admit exactly the quota: {passed:?}");
    assert!(passed[0] > 0 && passed[1] > 0, "both instances admitted some: {passed:?}");
    assert_eq!(refused, 30);
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

#[actix_web::test]
async fn two_instances_share_one_websocket_concurrency_limit_through_redis() {
    if !support::redis_available() {
        return;
    }
    let server = support::RedisServer::start();
    // The built-in limits: concurrent_per_key = 3 per client IP on /ws.
    let config: Config = actix_demo::DEFAULT_CONFIG.parse().unwrap();
    let a = instance(&config, &server.url()).await;
    let b = instance(&config, &server.url()).await;

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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut b2 = loop {
        match ws(b).await {
            Ok(client) => break client,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "the place never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    echoed(&mut b2, "hello").await;
    assert_eq!(refused(ws(a).await), 429);
}
