//! The HTTP limits over real sockets: refusals are the responses themselves (no rejection, no
//! `or` branch, no 500), headers in every style, body limits while the body streams, the
//! in-flight lease held until the response body ends, every key kind, the refusal hook and the
//! delay action.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tollgate::OwnedKey;
use tollgate::config::Config;
use tollgate_warp::{Identified, Identity, Limits, RateLimit};
use warp::Filter;

use support::{connect_from, get_from, post_chunked_from, post_from, read_reply, send_from, start};

fn config(text: &str) -> Config {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_refusal_is_the_429_itself_not_a_rejection_for_recover_or_the_next_or_branch() {
    let limit = RateLimit::from_config(&config(
        r#"
[policies.once]
limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]

[[routes]]
path = "/a"
policy = "once"
"#,
    ))
    .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let a = warp::path!("a").map(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        "a"
    });
    // A catch-all `or` branch: a refusal that were a rejection would fall through to it.
    let routes = a.or(warp::get().map(|| "fallback"));
    let addr = start(&limit, routes).await;

    let first = get_from("127.0.0.2", addr, "/a", "").await;
    assert_eq!((first.status, first.body.as_str()), (200, "a"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));

    let refused = get_from("127.0.0.2", addr, "/a", "").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(refused.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.header("x-ratelimit-reset").is_some());
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(refused.body, r#"{"error":"rate_limited","policy":"once","limit":"per_ip","retry_after":60}"#);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the refused request never reached the filter");

    // Other routes are not limited, and the filter's own rejections stay warp's responses.
    assert_eq!(get_from("127.0.0.2", addr, "/b", "").await.body, "fallback");
    let rejected = send_from("127.0.0.2", addr, b"DELETE /zzz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await;
    assert!(matches!(rejected.status, 404 | 405), "{rejected:?}");
}

#[tokio::test]
async fn allowed_and_refused_responses_carry_headers_in_every_style() {
    let limit = RateLimit::from_config(&config(
        r#"
[headers]
ietf = true

[policies.three]
limits = [{ name = "per_ip", quota = "3/min", key = "ip" }]

[[routes]]
path = "/h"
policy = "three"
"#,
    ))
    .unwrap();
    let addr = start(&limit, warp::path!("h").map(|| "h")).await;
    for left in ["2", "1", "0"] {
        let r = get_from("127.0.0.3", addr, "/h", "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left), "{r:?}");
        assert!(r.header("ratelimit").is_some_and(|v| v.contains(&format!("r={left}"))), "{r:?}");
        assert!(r.header("ratelimit-policy").is_some(), "{r:?}");
    }
    let refused = get_from("127.0.0.3", addr, "/h", "").await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("ratelimit").is_some_and(|v| v.contains("r=0")), "{refused:?}");
    assert!(refused.header("ratelimit-policy").is_some());
    assert!(refused.header("retry-after").is_some());

    // Without any style: no rate-limit headers on allowed responses, the 429 keeps Retry-After.
    let quiet = RateLimit::from_config(&config(
        r#"
[headers]
x_ratelimit = false

[policies.one]
limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]

[[routes]]
path = "/h"
policy = "one"
"#,
    ))
    .unwrap();
    let addr = start(&quiet, warp::path!("h").map(|| "h")).await;
    let allowed = get_from("127.0.0.3", addr, "/h", "").await;
    assert_eq!(allowed.status, 200);
    assert!(!allowed.head.contains("ratelimit"), "{allowed:?}");
    let refused = get_from("127.0.0.3", addr, "/h", "").await;
    assert_eq!((refused.status, refused.header("retry-after")), (429, Some("60")));

    // Spring Cloud Gateway's style, on both.
    let spring = RateLimit::from_config(&config(
        r#"
[headers]
spring = true

[policies.one]
limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]

[[routes]]
path = "/h"
policy = "one"
"#,
    ))
    .unwrap();
    let addr = start(&spring, warp::path!("h").map(|| "h")).await;
    let allowed = get_from("127.0.0.3", addr, "/h", "").await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.header("x-ratelimit-burst-capacity").is_some(), "{allowed:?}");
    assert!(allowed.header("x-ratelimit-replenish-rate").is_some(), "{allowed:?}");
    let refused = get_from("127.0.0.3", addr, "/h", "").await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("x-ratelimit-burst-capacity").is_some(), "{refused:?}");
}

fn echo_app()
-> (RateLimit, impl Filter<Extract = (http::Response<Bytes>,), Error = warp::Rejection> + Clone, Arc<AtomicUsize>) {
    let limit = RateLimit::from_config(&config(
        r#"
[[routes]]
path = "/echo"
methods = ["POST"]
max_body = "1KiB"
"#,
    ))
    .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let echo = warp::post().and(warp::path!("echo")).and(warp::body::bytes()).map(move |body: Bytes| {
        counted.fetch_add(1, Ordering::SeqCst);
        http::Response::new(body)
    });
    (limit, echo, hits)
}

#[tokio::test]
async fn a_body_over_the_largest_is_413_by_content_length_before_the_handler() {
    let (limit, echo, hits) = echo_app();
    let addr = start(&limit, echo).await;
    let body = "x".repeat(2000);
    let raw = format!("POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 2000\r\n\r\n{body}");
    let r = send_from("127.0.0.4", addr, raw.as_bytes()).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body, r#"{"error":"payload_too_large","limit":1024}"#);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the handler never ran");

    let raw = "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello";
    let r = send_from("127.0.0.4", addr, raw.as_bytes()).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));
}

#[tokio::test]
async fn a_chunked_body_passing_the_largest_is_413_while_it_streams() {
    let (limit, echo, hits) = echo_app();
    let addr = start(&limit, echo).await;
    let chunk = "y".repeat(600);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = send_from("127.0.0.5", addr, raw.as_bytes()).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body, r#"{"error":"payload_too_large","limit":1024}"#);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "warp::body::bytes() got the error, not the body");

    let raw = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = send_from("127.0.0.5", addr, raw.as_bytes()).await;
    assert_eq!((r.status, r.body.len()), (200, 600), "{r:?}");
}

/// `/both`: at most 64 bytes a body and 256 bytes of bodies a day per client; `/bytes`: the 256
/// bytes a day alone (a day, so that what the budget regains while a test runs rounds to
/// nothing). Each echoes its body through `warp::body::bytes()`; refusals by a limit carry
/// `x-refused-by` from the refusal hook.
async fn body_budgets() -> std::net::SocketAddr {
    let bytes = || {
        tollgate::Policy::builder("body_bytes")
            .limit(tollgate::Limit::new("body_bytes", "256/day".parse().unwrap()).key(tollgate::KeyKind::ip()))
            .build()
            .unwrap()
    };
    let limit = RateLimit::with_limits(Limits::new())
        .route("/both", Limits::new().max_body(64).body_bytes(bytes()))
        .route("/bytes", Limits::new().body_bytes(bytes()))
        .on_refusal(|decision, mut response| {
            let name = decision.limit.as_ref().map(|l| l.name.to_string()).unwrap_or_default();
            response.headers_mut().insert("x-refused-by", name.parse().unwrap());
            response
        });
    let echo = warp::post()
        .and(warp::path!("both").or(warp::path!("bytes")).unify())
        .and(warp::body::bytes())
        .map(http::Response::new);
    start(&limit, echo).await
}

/// A chunked HTTP/1.1 upload declares no length: it is charged what it carries as the filter
/// reads it — never refused 411 for want of a length, nor charged the route's largest body.
#[tokio::test]
async fn a_chunked_upload_is_charged_what_it_carries_never_411_nor_the_largest_body() {
    let addr = body_budgets().await;
    let from = "127.0.3.1";
    // No largest body on `/bytes`: 150 bytes, counted as they stream.
    let first = post_chunked_from(from, addr, "/bytes", &[&[b'x'; 100], &[b'x'; 50]]).await;
    assert_eq!((first.status, first.body.len()), (200, 150), "{first:?}");
    // A largest body of 64 on `/both`: 10 bytes charged, not 64.
    let small = post_chunked_from(from, addr, "/both", &[b"hello", b"world"]).await;
    assert_eq!((small.status, small.body.as_str()), (200, "helloworld"), "{small:?}");
    // The next requests show what they were charged: 256 - 150 - 1, and 256 - 10 - 1.
    let after = post_from(from, addr, "/bytes", b"x").await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining")), (200, Some("105")), "{after:?}");
    let after = post_from(from, addr, "/both", b"x").await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining")), (200, Some("245")), "{after:?}");
}

/// A chunked upload that passes the largest body gets the core's JSON 413 mid-stream, and was
/// charged what was read before the cut-off.
#[tokio::test]
async fn a_chunked_upload_over_the_largest_body_is_the_cores_413_and_charged_what_was_read() {
    let addr = body_budgets().await;
    let from = "127.0.3.2";
    let big = post_chunked_from(from, addr, "/both", &[&[b'y'; 40], &[b'y'; 40]]).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(big.header("content-type"), Some("application/json"), "{big:?}");
    assert_eq!(big.body, r#"{"error":"payload_too_large","limit":64}"#);
    // 40 read before the cut-off (the refused part is not charged), then 10: 256 - 40 - 10.
    let after = post_from(from, addr, "/both", &[b'z'; 10]).await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining")), (200, Some("206")), "{after:?}");
}

/// A chunked upload that passes the body-bytes budget gets the core's 429 (rate-limit headers,
/// JSON body, the refusal hook) at the part that passes it, instead of warp's answer to a body
/// it could not read; the parts read before it stay charged.
#[tokio::test]
async fn a_chunked_upload_over_the_bytes_budget_is_429_mid_stream() {
    let addr = body_budgets().await;
    let from = "127.0.3.3";
    let first = post_chunked_from(from, addr, "/bytes", &[&[b'x'; 100], &[b'x'; 100]]).await;
    assert_eq!((first.status, first.body.len()), (200, 200), "{first:?}");
    // 56 left: the first 40 pass, the next 40 do not.
    let refused = post_chunked_from(from, addr, "/bytes", &[&[b'x'; 40], &[b'x'; 40]]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("content-type"), Some("application/json"), "{refused:?}");
    assert!(refused.body.contains(r#""limit":"body_bytes""#), "{}", refused.body);
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("256"), "{refused:?}");
    assert_eq!(refused.header("x-refused-by"), Some("body_bytes"), "through the hook: {refused:?}");
    // 16 left.
    let rest = post_from(from, addr, "/bytes", &[b'z'; 16]).await;
    assert_eq!((rest.status, rest.header("x-ratelimit-remaining")), (200, Some("0")), "{rest:?}");
    assert_eq!(post_from(from, addr, "/bytes", b"z").await.status, 429);
}

/// A response body whose chunks the test sends.
struct Chunks(mpsc::Receiver<&'static str>);

impl Stream for Chunks {
    type Item = Result<&'static str, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

#[tokio::test]
async fn the_in_flight_lease_is_held_until_the_response_body_ends_or_is_dropped() {
    let limit = RateLimit::from_config(&config(
        r#"
[[routes]]
path = "/stream"
concurrent_per_key = 1
"#,
    ))
    .unwrap();
    let senders: Arc<Mutex<Vec<mpsc::Sender<&'static str>>>> = Arc::default();
    let stash = Arc::clone(&senders);
    let stream = warp::path!("stream").map(move || {
        let (tx, rx) = mpsc::channel(4);
        stash.lock().unwrap().push(tx);
        warp::reply::stream(Chunks(rx))
    });
    let addr = start(&limit, stream).await;
    let request = b"GET /stream HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";

    // The first response's head is out and its body still open: the place is held.
    let mut first = connect_from("127.0.0.6", addr).await;
    first.write_all(request).await.unwrap();
    let sender = wait_for_sender(&senders).await;
    sender.send("one").await.unwrap();
    let mut head = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut head)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    let refused = send_from("127.0.0.6", addr, request).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Another client has its own place.
    let mut other = connect_from("127.0.0.7", addr).await;
    other.write_all(request).await.unwrap();
    drop(wait_for_sender(&senders).await);
    assert_eq!(read_reply(&mut other).await.status, 200);

    // The body ends: the place is free again.
    sender.send("two").await.unwrap();
    drop(sender);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("two"), "the body ran to its end");
    let mut again = connect_from("127.0.0.6", addr).await;
    again.write_all(request).await.unwrap();
    let sender = wait_for_sender(&senders).await;
    let mut head = vec![0u8; 256];
    sender.send("three").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), again.read(&mut head)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // The client vanishes mid-body: hyper drops the body, and with it the lease.
    drop(again);
    drop(sender);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = connect_from("127.0.0.6", addr).await;
        probe.write_all(request).await.unwrap();
        if let Ok(tx) = tokio::time::timeout(Duration::from_millis(500), wait_for_sender(&senders)).await {
            drop(tx);
            assert_eq!(read_reply(&mut probe).await.status, 200);
            break;
        }
        assert_eq!(read_reply(&mut probe).await.status, 429);
        assert!(Instant::now() < deadline, "the dropped body's lease was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_sender(senders: &Mutex<Vec<mpsc::Sender<&'static str>>>) -> mpsc::Sender<&'static str> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(tx) = senders.lock().unwrap().pop() {
            return tx;
        }
        assert!(Instant::now() < deadline, "the handler never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_refusal_hook_shapes_the_response() {
    let policy = tollgate::Policy::builder("api")
        .limit(tollgate::Limit::new("per_ip", "1/min".parse().unwrap()).key(tollgate::KeyKind::ip()))
        .build()
        .unwrap();
    let limit = RateLimit::new(policy).on_refusal(|decision, mut response| {
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert("x-policy", decision.policy.parse().unwrap());
        *response.body_mut() = Bytes::from_static(b"slow down");
        response
    });
    let addr = start(&limit, warp::path!("x").map(|| "x")).await;
    assert_eq!(get_from("127.0.0.8", addr, "/x", "").await.status, 200);
    let r = get_from("127.0.0.8", addr, "/x", "").await;
    assert_eq!((r.status, r.body.as_str(), r.header("x-policy")), (503, "slow down", Some("api")));
    assert_eq!(r.header("retry-after"), Some("60"), "the default headers stay");
}

#[tokio::test]
async fn the_delay_action_waits_instead_of_refusing() {
    let limit = RateLimit::from_config(&config(
        r#"
[policies.slow]
limits = [{ name = "per_ip", quota = "2/s burst 1", key = "ip", on_exceed = "delay", max_delay = "2s" }]

[[routes]]
path = "/d"
policy = "slow"
"#,
    ))
    .unwrap();
    let addr = start(&limit, warp::path!("d").map(|| "d")).await;
    assert_eq!(get_from("127.0.0.9", addr, "/d", "").await.status, 200);
    let started = Instant::now();
    let r = get_from("127.0.0.9", addr, "/d", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn forwarded_clients_of_a_trusted_proxy_have_their_own_quota_and_others_cannot_forge_one() {
    let limit = RateLimit::from_config(&config(
        r#"
trusted_proxies = ["127.0.0.250/32"]

[policies.once]
limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]

[[routes]]
path = "/p"
policy = "once"
"#,
    ))
    .unwrap();
    let addr = start(&limit, warp::path!("p").map(|| "p")).await;
    let via = |client: &str| format!("x-forwarded-for: {client}\r\n");
    assert_eq!(get_from("127.0.0.250", addr, "/p", &via("203.0.113.1")).await.status, 200);
    assert_eq!(get_from("127.0.0.250", addr, "/p", &via("203.0.113.1")).await.status, 429);
    assert_eq!(get_from("127.0.0.250", addr, "/p", &via("203.0.113.2")).await.status, 200);
    // From an untrusted peer the header is ignored: counted by the peer address.
    assert_eq!(get_from("127.0.0.10", addr, "/p", &via("203.0.113.3")).await.status, 200);
    assert_eq!(get_from("127.0.0.10", addr, "/p", &via("203.0.113.4")).await.status, 429);
}

#[tokio::test]
async fn identity_from_the_identify_hook_is_counted_and_reaches_the_filters() {
    let policy = tollgate::Policy::builder("api")
        .limit(tollgate::Limit::new("per_user", "1/min".parse().unwrap()).key(tollgate::KeyKind::identity()))
        .build()
        .unwrap();
    let limit = RateLimit::new(policy).identify(|request| match request.headers.get("x-api-key") {
        Some(key) => Identified::default().identity(String::from_utf8_lossy(key.as_bytes())),
        None => Identified::anonymous(),
    });
    let whoami = warp::path!("me").and(warp::ext::get::<Identity>()).map(|id: Identity| id.0.to_string());
    let addr = start(&limit, whoami).await;
    let key = |k: &str| format!("x-api-key: {k}\r\n");
    let alice = get_from("127.0.0.11", addr, "/me", &key("alice")).await;
    assert_eq!((alice.status, alice.body.as_str()), (200, "alice"));
    assert_eq!(get_from("127.0.0.11", addr, "/me", &key("bob")).await.status, 200);
    assert_eq!(get_from("127.0.0.11", addr, "/me", &key("alice")).await.status, 429);
}

#[tokio::test]
async fn a_custom_key_from_an_async_hook() {
    let policy = tollgate::Policy::builder("api")
        .limit(tollgate::Limit::new("per_tenant", "1/min".parse().unwrap()).key(tollgate::KeyKind::Custom))
        .build()
        .unwrap();
    let limit = RateLimit::new(policy).identify_async(|request| {
        let tenant = request.headers.get("x-tenant").map(|v| v.as_bytes().to_vec());
        async move {
            tokio::task::yield_now().await;
            match tenant {
                Some(t) => Identified::default().custom(OwnedKey::Text(String::from_utf8_lossy(&t).into())),
                None => Identified::anonymous(),
            }
        }
    });
    let addr = start(&limit, warp::path!("t").map(|| "t")).await;
    let tenant = |t: &str| format!("x-tenant: {t}\r\n");
    assert_eq!(get_from("127.0.0.12", addr, "/t", &tenant("acme")).await.status, 200);
    assert_eq!(get_from("127.0.0.13", addr, "/t", &tenant("acme")).await.status, 429);
    assert_eq!(get_from("127.0.0.12", addr, "/t", &tenant("globex")).await.status, 200);
}

#[tokio::test]
async fn header_route_and_global_keys() {
    let limit = RateLimit::from_config(&config(
        r#"
[policies.by_header]
limits = [{ name = "per_client", quota = "1/min", key = "header:x-client" }]
[policies.by_route]
limits = [{ name = "per_route", quota = "1/min", key = "route" }]
[policies.everyone]
limits = [{ name = "global", quota = "1/min", key = "global" }]

[[routes]]
path = "/h"
policy = "by_header"
[[routes]]
path = "/items/{id}"
policy = "by_route"
[[routes]]
path = "/g"
policy = "everyone"
"#,
    ))
    .unwrap();
    let routes =
        warp::path!("h").map(|| "h").or(warp::path!("items" / u32).map(|_| "item")).or(warp::path!("g").map(|| "g"));
    let addr = start(&limit, routes).await;
    let client = |c: &str| format!("x-client: {c}\r\n");
    assert_eq!(get_from("127.0.0.14", addr, "/h", &client("a")).await.status, 200);
    assert_eq!(get_from("127.0.0.15", addr, "/h", &client("a")).await.status, 429);
    assert_eq!(get_from("127.0.0.14", addr, "/h", &client("b")).await.status, 200);
    // `/items/1` and `/items/2` are one route, one key.
    assert_eq!(get_from("127.0.0.14", addr, "/items/1", "").await.status, 200);
    let r = get_from("127.0.0.15", addr, "/items/2", "").await;
    assert_eq!((r.status, r.body.contains("per_route")), (429, true), "{r:?}");
    assert_eq!(get_from("127.0.0.14", addr, "/g", "").await.status, 200);
    assert_eq!(get_from("127.0.0.16", addr, "/g", "").await.status, 429);
}

#[tokio::test]
async fn filters_read_the_peer_address_with_remote() {
    let limit = RateLimit::from_config(&config("")).unwrap();
    let peer = warp::path!("peer")
        .and(tollgate_warp::remote())
        .map(|peer: Option<std::net::SocketAddr>| peer.map(|p| p.ip().to_string()).unwrap_or_default());
    let addr = start(&limit, peer).await;
    assert_eq!(get_from("127.0.0.17", addr, "/peer", "").await.body, "127.0.0.17");
}

#[tokio::test]
async fn serve_with_shutdown_stops_accepting_and_returns() {
    let limit = RateLimit::from_config(&config("")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_warp::serve_with_shutdown(
        listener,
        limit.service(warp::path!("x").map(|| "x")),
        async move {
            let _ = stopped.await;
        },
    ));
    assert_eq!(get_from("127.0.0.18", addr, "/x", "").await.body, "x");
    stop.send(()).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    assert!(finished.is_ok());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn a_trailing_slash_warp_serves_spends_the_routes_quota() {
    let limit = RateLimit::from_config(&config(
        r#"
[policies.once]
limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]

[[routes]]
path = "/login"
policy = "once"
"#,
    ))
    .unwrap();
    let addr = start(&limit, warp::path!("login").map(|| "login")).await;
    // warp's `path!("login")` serves `/login/` too: it must not be a second, unlimited door.
    let first = get_from("127.0.0.30", addr, "/login/", "").await;
    assert_eq!((first.status, first.body.as_str()), (200, "login"), "{first:?}");
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(get_from("127.0.0.30", addr, "/login", "").await.status, 429);
    assert_eq!(get_from("127.0.0.30", addr, "/login/", "").await.status, 429);
    // And the other way round, for another client.
    assert_eq!(get_from("127.0.0.31", addr, "/login", "").await.status, 200);
    assert_eq!(get_from("127.0.0.31", addr, "/login/", "").await.status, 429);
}
