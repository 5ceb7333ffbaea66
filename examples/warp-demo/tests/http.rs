//! The demo's HTTP routes over real sockets, with its built-in limits: the burst of 10 then 429
//! with headers and the JSON body, 413 by Content-Length and by a chunked body, 429 over the
//! body bytes per minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::config::Config;

async fn demo() -> SocketAddr {
    let config: Config = warp_demo::DEFAULT_CONFIG.parse().unwrap();
    let limits = warp_demo::limits(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { warp_demo::serve(listener, &limits, warp_demo::routes()).await });
    addr
}

/// Sends `raw` on a fresh connection; the status, the lower-cased head and the body.
async fn send(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn hello(addr: SocketAddr) -> (u16, String, String) {
    send(addr, b"GET /api/hello HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n").await
}

#[tokio::test]
async fn the_burst_of_10_passes_then_429_with_headers_and_json() {
    let addr = demo().await;
    for left in (0..10).rev() {
        let (status, head, body) = hello(addr).await;
        assert_eq!((status, body.as_str()), (200, "hello"));
        assert!(head.contains(&format!("x-ratelimit-remaining: {left}\r\n")), "{head}");
        assert!(head.contains("x-ratelimit-limit: 10\r\n"), "{head}");
    }
    let (status, head, body) = hello(addr).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    assert!(head.contains("x-ratelimit-remaining: 0\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body, r#"{"error":"rate_limited","policy":"per_ip","limit":"per_ip","retry_after":1}"#);
}

#[tokio::test]
async fn echo_answers_413_over_64kib_by_length_and_while_streaming() {
    let addr = demo().await;
    let (status, _, body) =
        send(addr, b"POST /api/echo HTTP/1.1\r\nhost: demo\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello")
            .await;
    assert_eq!((status, body.as_str()), (200, "hello"));

    let raw = "POST /api/echo HTTP/1.1\r\nhost: demo\r\nconnection: close\r\ncontent-length: 70000\r\n\r\n";
    let (status, _, body) = send(addr, raw.as_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(body, r#"{"error":"payload_too_large","limit":65536}"#);

    let chunk = "z".repeat(16 * 1024);
    let mut raw = String::from(
        "POST /api/echo HTTP/1.1\r\nhost: demo\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let (status, _, body) = send(addr, raw.as_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(body, r#"{"error":"payload_too_large","limit":65536}"#);
}

#[tokio::test]
async fn echo_answers_429_after_1mib_of_bodies_in_a_minute() {
    let addr = demo().await;
    let body = "e".repeat(60 * 1024);
    let raw = format!(
        "POST /api/echo HTTP/1.1\r\nhost: demo\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut statuses = Vec::new();
    for _ in 0..18 {
        statuses.push(send(addr, raw.as_bytes()).await.0);
    }
    // 17 bodies of 60 KiB fit in 1 MiB (1020 KiB); the 18th does not.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 17, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}
