//! The layer built from the core's configuration, over real sockets: each route's leases are
//! counted by the route's own key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use bytes::Bytes;
use common::{send, serve};
use http::StatusCode;
use http_body_util::Full;
use tokio::sync::Notify;
use tollgate::config::Config;
use tollgate_tower::RateLimitLayer;

const CONFIG: &str = r#"
[policies.per_client]
limits = [{ name = "per_client", quota = "100/min", key = "header:x-client" }]

[[routes]]
path = "/slow"
methods = ["GET"]
policy = "per_client"
key = "header:x-client"
concurrent_per_key = 1
"#;

fn request(client: &str, hold: bool) -> http::Request<Full<Bytes>> {
    let mut req = common::get("/slow").header("x-client", client);
    if hold {
        req = req.header("x-hold", "1");
    }
    req.body(Full::default()).unwrap()
}

#[tokio::test]
async fn in_flight_leases_are_counted_by_the_routes_key() {
    let release = Arc::new(Notify::new());
    let held = Arc::new(Notify::new());
    let (r, h) = (Arc::clone(&release), Arc::clone(&held));
    let handler = move |headers: HeaderMap| {
        let (release, held) = (Arc::clone(&r), Arc::clone(&h));
        async move {
            if headers.contains_key("x-hold") {
                held.notify_one();
                release.notified().await;
            }
            "done"
        }
    };
    let config: Config = CONFIG.parse().unwrap();
    let layer = RateLimitLayer::from_config(&config).unwrap();
    let addr = serve(Router::new().route("/slow", get(handler)).layer(layer)).await;

    // Client a holds its one place with a request the handler keeps waiting.
    let first = tokio::spawn(async move { send(addr, request("a", true)).await });
    tokio::time::timeout(Duration::from_secs(10), held.notified()).await.expect("the first request never arrived");
    // Every request comes from 127.0.0.1: counted by IP (the layer's default) b would be refused.
    let refused = send(addr, request("a", false)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.text().contains(r#""policy":"in_flight:/slow""#), "{}", refused.text());
    let other = send(addr, request("b", false)).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.text(), "done");

    release.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let again = send(addr, request("a", false)).await;
    assert_eq!(again.status, StatusCode::OK, "the place came back when the response finished");
}

#[test]
fn config_errors_name_the_field() {
    let config: Config = "[[routes]]\npath = \"/\"\nkey = \"header:x-client\"".parse().unwrap();
    assert!(RateLimitLayer::from_config(&config).is_ok());
    let err = "[[routes]]\npath = \"/\"\nmethods = [\"G(E)T\"]".parse::<Config>().unwrap_err().to_string();
    assert!(err.contains("routes[0].methods") && err.contains("G(E)T"), "{err}");
}
