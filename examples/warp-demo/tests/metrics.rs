//! The demo's `/metrics`: tollgate's decisions, scraped in Prometheus's format over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::config::Config;

/// One `GET` of `path` on a fresh connection: the status code, the head and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The value of the sample `series` (name and labels, as rendered) in a scrape.
fn sample(scrape: &str, series: &str) -> u64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{scrape}"))
}

#[tokio::test]
async fn metrics_count_the_demos_decisions_and_are_not_limited() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    tollgate::observe::describe();
    let config: Config = warp_demo::DEFAULT_CONFIG.parse().unwrap();
    let limits = warp_demo::limits(&config).unwrap();
    let routes = warp_demo::with_metrics(warp_demo::routes(), recorder);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { warp_demo::serve(listener, &limits, routes).await });

    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(get(addr, "/api/hello").await.0);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert!(refused > 0, "a burst of 10 refuses some of 15 quick requests: {statuses:?}");

    let (status, head, scrape) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(!head.contains("x-ratelimit"), "{head}");
    let allowed = sample(&scrape, r#"tollgate_decisions_total{policy="per_ip",outcome="allowed"}"#);
    let limited = sample(&scrape, r#"tollgate_decisions_total{policy="per_ip",outcome="rate_limited"}"#);
    assert_eq!((allowed, limited), (15 - refused, refused));
    for _ in 0..15 {
        assert_eq!(get(addr, "/metrics").await.0, 200);
    }
}
