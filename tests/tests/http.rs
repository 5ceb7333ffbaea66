//! The HTTP contract of every demo (`examples/demo-config.toml`), over real sockets: the request
//! burst and its refusal, rate-limit headers, trusted-proxy handling, the largest body, the
//! body bytes per period, the request rate of a route with a body limit too (and which of the
//! two its headers show), and routes without limits.
//!
//! Limits replenish as time passes, so where a count depends on the clock a scenario measures the
//! time it took and allows what the limit may have replenished in it ([`admitted_at_most`]); on
//! an unhurried machine that slack is nothing and the counts are the exact ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http::header::CONTENT_LENGTH;
use tollgate_conformance::{Server, TRUSTED_PROXY, admitted_at_most, check_refusal, chunked, run, unfinished};

/// `GET /api/hello`: `5/s burst 10` per client IP.
const HELLO_BURST: u64 = 10;
/// One more request every 200 ms.
const HELLO_EVERY: Duration = Duration::from_millis(200);

/// `POST /api/echo`: the largest body.
const MAX_BODY: usize = 64 * 1024;
/// `POST /api/echo`: `1MiB/min` of bodies per client IP.
const BODY_BYTES: u64 = 1024 * 1024;

/// `POST /api/echo`: `5/s burst 20` requests per client IP, whatever their bodies.
const ECHO_BURST: u64 = 20;
/// One more request every 200 ms.
const ECHO_EVERY: Duration = Duration::from_millis(200);

/// A bound on every loop that waits for a refusal.
const MAX_REQUESTS: u64 = 100;

#[test]
fn burst_of_10_then_429_with_headers_and_json_body() {
    run("GET /api/hello: the burst of 10 passes, the 11th gets 429 with headers and a JSON body", burst);
}

async fn burst(server: Server) {
    let mut http = server.client(2).http().await;
    let started = Instant::now();
    for sent in 1..=MAX_REQUESTS {
        let reply = http.get("/api/hello", &[]).await;
        if sent <= HELLO_BURST {
            assert_eq!(reply.status, 200, "request {sent} of the burst: {reply:?}");
            assert_eq!(&reply.body[..], b"hello", "{reply:?}");
            continue;
        }
        if reply.status == 200 {
            let bound = admitted_at_most(HELLO_BURST, HELLO_EVERY, started.elapsed());
            assert!(sent <= bound, "{sent} requests admitted in {:?}: over the burst and 5/s", started.elapsed());
            continue;
        }
        let body = check_refusal(&reply, HELLO_BURST);
        assert_eq!(body["policy"], "per_ip", "{reply:?}");
        assert_eq!(reply.number("x-ratelimit-remaining"), 0, "{reply:?}");
        assert_eq!(reply.number("retry-after"), 1, "at 5/s the next request is at most 200 ms away: {reply:?}");
        assert!((1..=2).contains(&reply.number("x-ratelimit-reset")), "full again within 2 s: {reply:?}");
        return;
    }
    panic!("no 429 in {MAX_REQUESTS} requests");
}

#[test]
fn allowed_responses_count_down() {
    run("GET /api/hello: allowed responses carry X-RateLimit-*, remaining dropping as the client spends", count_down);
}

async fn count_down(server: Server) {
    let mut http = server.client(3).http().await;
    let started = Instant::now();
    for spent in 1..=5 {
        let reply = http.get("/api/hello", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.number("x-ratelimit-limit"), HELLO_BURST, "{reply:?}");
        let remaining = reply.number("x-ratelimit-remaining");
        let replenished = admitted_at_most(0, HELLO_EVERY, started.elapsed());
        let least = HELLO_BURST - spent;
        assert!(
            (least..=least + replenished).contains(&remaining),
            "after {spent} requests in {:?}, {remaining} remain; expected {least} (+{replenished} replenished): {reply:?}",
            started.elapsed()
        );
        assert!((1..=2).contains(&reply.number("x-ratelimit-reset")), "{reply:?}");
    }
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    run("GET /api/hello: X-Forwarded-For from an untrusted peer does not change the key", spoofing);
}

async fn spoofing(server: Server) {
    let mut http = server.client(4).http().await;
    let started = Instant::now();
    for sent in 1..=MAX_REQUESTS {
        // A new forwarded address each time: were any of them believed, each would be a fresh client.
        let forged = format!("198.51.100.{sent}");
        let headers = [
            ("x-forwarded-for", forged.as_str()),
            ("x-real-ip", forged.as_str()),
            ("forwarded", &format!("for={forged}")),
        ];
        let reply = http.get("/api/hello", &headers).await;
        if sent <= HELLO_BURST {
            assert_eq!(reply.status, 200, "{reply:?}");
            let least = HELLO_BURST - sent;
            let remaining = reply.number("x-ratelimit-remaining");
            let replenished = admitted_at_most(0, HELLO_EVERY, started.elapsed());
            assert!(
                (least..=least + replenished).contains(&remaining),
                "request {sent} forged as {forged}: {remaining} remain, the client's own quota would leave {least}: {reply:?}"
            );
        } else if reply.status == 200 {
            assert!(sent <= admitted_at_most(HELLO_BURST, HELLO_EVERY, started.elapsed()), "{sent} admitted");
        } else {
            check_refusal(&reply, HELLO_BURST);
            return;
        }
    }
    panic!("no 429 in {MAX_REQUESTS} requests with forged forwarding headers");
}

#[test]
fn trusted_proxy_forwards_each_client_its_own_quota() {
    run("GET /api/hello from the trusted proxy: one quota per X-Forwarded-For client", trusted_proxy);
}

async fn trusted_proxy(server: Server) {
    let mut http = server.client(TRUSTED_PROXY).http().await;
    let (a, b, c) = ("203.0.113.1", "203.0.113.2", "203.0.113.3");
    let started = Instant::now();
    // Interleaved: were a and b one key, every request would take from one quota.
    for spent in 1..=5 {
        for client in [a, b] {
            let reply = http.get("/api/hello", &[("x-forwarded-for", client)]).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            let remaining = reply.number("x-ratelimit-remaining");
            let least = HELLO_BURST - spent;
            let replenished = admitted_at_most(0, HELLO_EVERY, started.elapsed());
            assert!(
                (least..=least + replenished).contains(&remaining),
                "forwarded client {client}, request {spent}: {remaining} remain, its own quota leaves {least}: {reply:?}"
            );
        }
    }
    // A chain whose right-most untrusted hop is a (the left part written by the client) is a: it
    // spends a's quota until a is refused.
    let chain = format!("192.0.2.66, {a}");
    let mut spent_by_a = 5;
    loop {
        let reply = http.get("/api/hello", &[("x-forwarded-for", &chain)]).await;
        if reply.status == 200 {
            spent_by_a += 1;
            assert!(
                spent_by_a <= admitted_at_most(HELLO_BURST, HELLO_EVERY, started.elapsed()),
                "{spent_by_a} requests admitted for {a}"
            );
            continue;
        }
        let body = check_refusal(&reply, HELLO_BURST);
        assert_eq!(body["policy"], "per_ip", "{reply:?}");
        break;
    }
    assert!(spent_by_a >= HELLO_BURST, "{a} was refused after {spent_by_a} requests, before its burst");
    // b and c still have theirs, and so has the proxy itself (no header: its own address).
    let reply = http.get("/api/hello", &[("x-forwarded-for", b)]).await;
    assert_eq!(reply.status, 200, "{b} shares no quota with {a}: {reply:?}");
    for headers in [&[("x-forwarded-for", c)][..], &[]] {
        let reply = http.get("/api/hello", headers).await;
        assert_eq!(reply.status, 200, "{headers:?}: {reply:?}");
        assert_eq!(reply.number("x-ratelimit-remaining"), HELLO_BURST - 1, "a fresh client, {headers:?}: {reply:?}");
    }
}

#[test]
fn body_over_64kib_by_content_length_is_413() {
    run("POST /api/echo: Content-Length over 64 KiB gets 413 before the body is read", over_max_by_length);
}

async fn over_max_by_length(server: Server) {
    let client = server.client(5);
    for declared in [MAX_BODY + 1, 1 << 20] {
        // The body is never sent: the answer can only come from the header.
        let request = client
            .request(Method::POST, "/api/echo")
            .header(CONTENT_LENGTH, declared)
            .body(unfinished(Vec::new()))
            .unwrap();
        let reply = client.http().await.send(request).await.expect("a response with the body still unsent");
        assert_eq!(reply.status, 413, "Content-Length: {declared}: {reply:?}");
        let body = reply.json();
        assert_eq!(body["error"], "payload_too_large", "{reply:?}");
        assert_eq!(body["limit"], MAX_BODY, "{reply:?}");
    }
    // The largest body passes, echoed; the 413s spent nothing of the client's body bytes.
    let sent = Bytes::from(vec![b'x'; MAX_BODY]);
    let reply = client.post("/api/echo", sent.clone()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, sent, "the echo");
    assert_eq!(reply.number("x-ratelimit-limit"), BODY_BYTES, "{reply:?}");
    assert_eq!(reply.number("x-ratelimit-remaining"), BODY_BYTES - MAX_BODY as u64, "{reply:?}");
}

#[test]
fn streamed_body_over_64kib_is_413() {
    run("POST /api/echo: a chunked body (no Content-Length) passing 64 KiB gets 413", over_max_streamed);
}

async fn over_max_streamed(server: Server) {
    let client = server.client(6);
    // A chunked body within the limit passes (a body of unknown length is not refused as such).
    let small = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
    let request = client.request(Method::POST, "/api/echo").body(chunked(small)).unwrap();
    let reply = client.http().await.send(request).await.expect("a response");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(&reply.body[..], b"abcdef", "{reply:?}");
    // 64 chunks of 1 KiB reach the limit, the 65th passes it; then the body waits, unfinished,
    // so the server answers from what it read (and leaves no unread bytes to reset the socket).
    let chunks = (0..65).map(|_| Bytes::from(vec![b'y'; 1024])).collect();
    let request = client.request(Method::POST, "/api/echo").body(unfinished(chunks)).unwrap();
    let reply = client.http().await.send(request).await.expect("a response with the body unfinished");
    assert_eq!(reply.status, 413, "{reply:?}");
}

#[test]
fn body_bytes_per_minute() {
    run("POST /api/echo: after 1 MiB of bodies in a minute the next one gets 429", body_bytes);
}

async fn body_bytes(server: Server) {
    let client = server.client(7);
    let mut http = client.http().await;
    let sent = Bytes::from(vec![b'z'; MAX_BODY]);
    let fits = BODY_BYTES / MAX_BODY as u64;
    let every = Duration::from_secs(60) / u32::try_from(fits).unwrap();
    let started = Instant::now();
    for posted in 1..=MAX_REQUESTS {
        let request = client.request(Method::POST, "/api/echo").body(tollgate_conformance::full(sent.clone())).unwrap();
        let reply = http.send(request).await.expect("a response");
        if posted <= fits {
            assert_eq!(reply.status, 200, "body {posted} of 64 KiB: {reply:?}");
            assert_eq!(reply.body.len(), MAX_BODY, "the echo");
            continue;
        }
        if reply.status == 200 {
            assert!(posted <= admitted_at_most(fits, every, started.elapsed()), "{posted} bodies of 64 KiB admitted");
            continue;
        }
        check_refusal(&reply, BODY_BYTES);
        assert!(reply.number("x-ratelimit-remaining") < MAX_BODY as u64, "{reply:?}");
        assert!(reply.number("retry-after") <= 4, "64 KiB come back within 3.75 s: {reply:?}");
        return;
    }
    panic!("no 429 after {MAX_REQUESTS} bodies of 64 KiB");
}

#[test]
fn empty_posts_are_limited() {
    run("POST /api/echo with no body: the burst of 20 passes, then 429 from the request rate", empty_posts);
}

async fn empty_posts(server: Server) {
    let client = server.client(9);
    let mut http = client.http().await;
    let started = Instant::now();
    for sent in 1..=MAX_REQUESTS {
        let request = client.request(Method::POST, "/api/echo").body(tollgate_conformance::empty()).unwrap();
        let reply = http.send(request).await.expect("a response");
        if sent <= ECHO_BURST {
            assert_eq!(reply.status, 200, "empty POST {sent} of the burst: {reply:?}");
            // No body, no body bytes spent: the request rate is the only limit that applied.
            assert_eq!(reply.number("x-ratelimit-limit"), ECHO_BURST, "{reply:?}");
            continue;
        }
        if reply.status == 200 {
            let bound = admitted_at_most(ECHO_BURST, ECHO_EVERY, started.elapsed());
            assert!(sent <= bound, "{sent} empty POSTs admitted in {:?}: over the burst and 5/s", started.elapsed());
            continue;
        }
        let body = check_refusal(&reply, ECHO_BURST);
        assert_eq!(body["policy"], "echo", "{reply:?}");
        assert_eq!(reply.number("retry-after"), 1, "at 5/s the next request is at most 200 ms away: {reply:?}");
        return;
    }
    panic!("no 429 in {MAX_REQUESTS} empty POSTs");
}

#[test]
fn echo_headers_show_the_binding_limit() {
    run(
        "POST /api/echo: X-RateLimit-* show the limit with the least headroom left, request rate or body bytes",
        binding,
    );
}

async fn binding(server: Server) {
    let client = server.client(10);
    let mut http = client.http().await;
    let started = Instant::now();
    // 64 KiB first: 1/16 of the body bytes spent (15/16 left), 1/20 of the requests (19/20 left).
    let request =
        client.request(Method::POST, "/api/echo").body(tollgate_conformance::full(vec![b'b'; MAX_BODY])).unwrap();
    let reply = http.send(request).await.expect("a response");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.number("x-ratelimit-limit"), BODY_BYTES, "the body bytes bind: {reply:?}");
    let remaining = reply.number("x-ratelimit-remaining");
    let least = BODY_BYTES - MAX_BODY as u64;
    let byte_every = Duration::from_secs(60) / u32::try_from(BODY_BYTES).unwrap();
    let replenished = admitted_at_most(0, byte_every, started.elapsed());
    assert!(
        (least..=least + replenished).contains(&remaining),
        "{remaining} bytes remain, expected {least}: {reply:?}"
    );
    // Then one byte: the requests (18/20 left) bind, the bytes having 15/16 left still.
    let request = client.request(Method::POST, "/api/echo").body(tollgate_conformance::full("b")).unwrap();
    let reply = http.send(request).await.expect("a response");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.number("x-ratelimit-limit"), ECHO_BURST, "the request rate binds: {reply:?}");
    let remaining = reply.number("x-ratelimit-remaining");
    let replenished = admitted_at_most(0, ECHO_EVERY, started.elapsed());
    assert!(
        (ECHO_BURST - 2..=ECHO_BURST - 2 + replenished).contains(&remaining),
        "{remaining} requests remain after 2, expected {}: {reply:?}",
        ECHO_BURST - 2
    );
}

#[test]
fn routes_without_limits_are_not_limited() {
    run("GET /metrics: no limit, no rate-limit headers; it counts the decisions", unlimited);
}

async fn unlimited(server: Server) {
    let mut http = server.client(8).http().await;
    assert_eq!(http.get("/api/hello", &[]).await.status, 200);
    for _ in 0..2 * HELLO_BURST {
        let reply = http.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.header("x-ratelimit-limit").is_none(), "{reply:?}");
        assert!(reply.header("retry-after").is_none(), "{reply:?}");
    }
    let reply = http.get("/metrics", &[]).await;
    let scrape = String::from_utf8_lossy(&reply.body);
    let allowed = scrape.lines().find(|line| {
        line.starts_with("tollgate_decisions_total{")
            && line.contains(r#"policy="per_ip""#)
            && line.contains(r#"outcome="allowed""#)
    });
    assert_eq!(allowed.and_then(|l| l.rsplit(' ').next()), Some("1"), "the one allowed request:\n{scrape}");
}
