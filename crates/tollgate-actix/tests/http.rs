//! The middleware over real sockets: limits, keys, headers, bodies, leases, workers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::{App, HttpMessage, HttpResponse, web};
use bytes::Bytes;
use common::{get, post, post_chunked};
use tollgate::engine::Limits;
use tollgate::{ClientIpResolver, ConcurrencyLimiter, HeaderOptions, KeyKind, Limit, OnExceed, Policy};
use tollgate_actix::{CustomKey, Identity, RateLimit, RouteName, Tier};

fn per_ip(quota: &str) -> Policy {
    Policy::builder("api").limit(Limit::new("per_ip", quota.parse().unwrap()).key(KeyKind::ip())).build().unwrap()
}

fn keyed(key: KeyKind, quota: &str) -> Policy {
    Policy::builder("api").limit(Limit::new("by_key", quota.parse().unwrap()).key(key)).build().unwrap()
}

/// Counts its calls and answers "hello".
fn counting(calls: &Arc<AtomicUsize>) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(HttpResponse::Ok().body("hello"))
    }
}

/// Two workers, one engine created outside the factory: a client gets exactly its burst across
/// both workers, not twice it.
#[actix_web::test]
async fn two_workers_share_exactly_one_burst() {
    let limit = RateLimit::new(per_ip("10/hour"));
    let server = serve!(2, move || {
        App::new().wrap(limit.clone()).route(
            "/",
            web::get().to(|| async { HttpResponse::Ok().body(format!("{:?}", std::thread::current().id())) }),
        )
    });
    let (mut ok, mut refused, mut threads) = (0, 0, HashSet::new());
    for _ in 0..40 {
        let reply = get(server.addr, "/", "").await;
        match reply.status {
            200 => {
                ok += 1;
                threads.insert(reply.text());
            }
            429 => {
                refused += 1;
                assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("0"), "{reply:?}");
            }
            other => panic!("status {other}: {reply:?}"),
        }
    }
    assert_eq!((ok, refused), (10, 30), "exactly the burst of 10 passes across both workers");
    assert_eq!(threads.len(), 2, "both workers served admitted requests: {threads:?}");
    server.stop().await;
}

#[actix_web::test]
async fn refusal_is_a_429_response_with_headers_and_json_and_skips_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let limit = RateLimit::new(per_ip("2/min"));
    let handler = counting(&calls);
    let server = serve!(1, move || App::new().wrap(limit.clone()).route("/", web::get().to(handler.clone())));
    let first = get(server.addr, "/", "").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    assert_eq!(first.header("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining").as_deref(), Some("1"));
    assert!(first.header("x-ratelimit-reset").is_some());
    assert_eq!(get(server.addr, "/", "").await.header("x-ratelimit-remaining").as_deref(), Some("0"));
    let refused = get(server.addr, "/", "").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after").as_deref(), Some("30"));
    assert_eq!(refused.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(refused.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(refused.text(), r#"{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":30}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the refused request never reached the handler");
    server.stop().await;
}

#[actix_web::test]
async fn header_styles_on_allowed_and_refused_responses() {
    let ietf = HeaderOptions { x_ratelimit: false, ietf: true, ..Default::default() };
    let limit = RateLimit::new(per_ip("1/min")).headers(ietf);
    let quiet = RateLimit::new(per_ip("100/min")).headers(HeaderOptions { x_ratelimit: false, ..Default::default() });
    let server = serve!(1, move || {
        App::new()
            .service(web::resource("/ietf").wrap(limit.clone()).to(|| async { "ok" }))
            .service(web::resource("/quiet").wrap(quiet.clone()).to(|| async { "ok" }))
    });
    let allowed = get(server.addr, "/ietf", "").await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.header("ratelimit").is_some(), "{}", allowed.head);
    assert!(allowed.header("ratelimit-policy").is_some(), "{}", allowed.head);
    assert!(allowed.header("x-ratelimit-limit").is_none(), "{}", allowed.head);
    let refused = get(server.addr, "/ietf", "").await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("ratelimit").is_some(), "{}", refused.head);
    assert!(refused.header("retry-after").is_some(), "{}", refused.head);
    let quiet = get(server.addr, "/quiet", "").await;
    assert_eq!(quiet.status, 200);
    assert!(!quiet.head.contains("ratelimit"), "no rate-limit headers with every style off: {}", quiet.head);
    server.stop().await;
}

#[actix_web::test]
async fn custom_refusal_hook_shapes_the_refusal() {
    let limit = RateLimit::new(per_ip("1/min")).on_refusal(|decision, mut response| {
        let name = decision.limit.as_ref().map(|l| l.name.to_string()).unwrap_or_default();
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-refused-by"),
            actix_web::http::header::HeaderValue::from_str(&name).unwrap(),
        );
        response
    });
    let server = serve!(1, move || App::new().wrap(limit.clone()).route("/", web::get().to(|| async { "ok" })));
    assert_eq!(get(server.addr, "/", "").await.status, 200);
    let refused = get(server.addr, "/", "").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-refused-by").as_deref(), Some("per_ip"));
    assert!(refused.header("retry-after").is_some());
    server.stop().await;
}

#[actix_web::test]
async fn body_limits_413_by_length_while_streaming_and_429_by_bytes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let bytes = Policy::builder("bytes")
        .limit(Limit::new("bytes", "100/hour".parse().unwrap()).key(KeyKind::ip()))
        .build()
        .unwrap();
    let limit = RateLimit::with_limits(Limits::new().max_body(64).body_bytes(bytes));
    let seen = Arc::clone(&calls);
    let server = serve!(1, move || {
        let seen = Arc::clone(&seen);
        App::new().wrap(limit.clone()).route(
            "/echo",
            web::post().to(move |body: Bytes| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move { HttpResponse::Ok().body(body) }
            }),
        )
    });
    // Over the largest body by Content-Length: 413 before the handler runs.
    let big = post(server.addr, "/echo", &[b'x'; 65]).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(big.text(), r#"{"error":"payload_too_large","limit":64}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Within it: echoed, 40 of the 100 bytes spent.
    let ok = post(server.addr, "/echo", &[b'y'; 40]).await;
    assert_eq!((ok.status, ok.body.len()), (200, 40));
    // Chunked, no length: charged what it carries (3 of the 60 left), not the largest body.
    let chunked = post_chunked(server.addr, "/echo", &[b"abc"]).await;
    assert_eq!((chunked.status, chunked.text().as_str()), (200, "abc"), "{chunked:?}");
    // 57 left: a body of 58 is refused by bytes.
    let refused = post(server.addr, "/echo", &[b'z'; 58]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.text().contains(r#""limit":"bytes""#), "{}", refused.text());
    server.stop().await;
}

/// `/both`: at most 64 bytes a body and 256 bytes of bodies a day per client; `/bytes`: the 256
/// bytes a day alone (a day, so that what the budget regains while a test runs rounds to
/// nothing). Each echoes its body through actix's `Bytes` extractor; refusals by a limit carry
/// `x-refused-by` from the refusal hook.
fn body_budgets() -> RateLimit {
    let bytes = || {
        Policy::builder("body_bytes")
            .limit(Limit::new("body_bytes", "256/day".parse().unwrap()).key(KeyKind::ip()))
            .build()
            .unwrap()
    };
    RateLimit::with_limits(Limits::new())
        .route("/both", Limits::new().max_body(64).body_bytes(bytes()))
        .route("/bytes", Limits::new().body_bytes(bytes()))
        .on_refusal(|decision, mut response| {
            let name = decision.limit.as_ref().map(|l| l.name.to_string()).unwrap_or_default();
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-refused-by"),
                actix_web::http::header::HeaderValue::from_str(&name).unwrap(),
            );
            response
        })
}

fn echo_both_and_bytes(limit: &RateLimit) -> common::Served {
    let limit = limit.clone();
    serve!(1, move || {
        App::new()
            .wrap(limit.clone())
            .route("/both", web::post().to(|body: Bytes| async move { body }))
            .route("/bytes", web::post().to(|body: Bytes| async move { body }))
    })
}

/// A chunked HTTP/1.1 upload declares no length: it is charged what it carries as the handler
/// reads it — never refused 411 for want of a length, nor charged the route's largest body.
#[actix_web::test]
async fn a_chunked_upload_is_charged_what_it_carries_never_411_nor_the_largest_body() {
    let server = echo_both_and_bytes(&body_budgets());
    // No largest body on `/bytes`: 150 bytes, counted as they stream.
    let first = post_chunked(server.addr, "/bytes", &[&[b'x'; 100], &[b'x'; 50]]).await;
    assert_eq!((first.status, first.body.len()), (200, 150), "{first:?}");
    // A largest body of 64 on `/both`: 10 bytes charged, not 64.
    let small = post_chunked(server.addr, "/both", &[b"hello", b"world"]).await;
    assert_eq!((small.status, small.text().as_str()), (200, "helloworld"), "{small:?}");
    // The next requests show what they were charged: 256 - 150 - 1, and 256 - 10 - 1.
    let after = post(server.addr, "/bytes", b"x").await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining").as_deref()), (200, Some("105")), "{after:?}");
    let after = post(server.addr, "/both", b"x").await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining").as_deref()), (200, Some("245")), "{after:?}");
    server.stop().await;
}

/// A chunked upload that passes the largest body gets the core's JSON 413 mid-stream, and was
/// charged what was read before the cut-off.
#[actix_web::test]
async fn a_chunked_upload_over_the_largest_body_is_the_cores_413_and_charged_what_was_read() {
    let server = echo_both_and_bytes(&body_budgets());
    let big = post_chunked(server.addr, "/both", &[&[b'y'; 40], &[b'y'; 40]]).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert_eq!(big.header("content-type").as_deref(), Some("application/json"), "{big:?}");
    assert_eq!(big.text(), r#"{"error":"payload_too_large","limit":64}"#);
    // 40 read before the cut-off (the refused part is not charged), then 10: 256 - 40 - 10.
    let after = post(server.addr, "/both", &[b'z'; 10]).await;
    assert_eq!((after.status, after.header("x-ratelimit-remaining").as_deref()), (200, Some("206")), "{after:?}");
    server.stop().await;
}

/// A chunked upload that passes the body-bytes budget gets the core's 429 (rate-limit headers,
/// JSON body, the refusal hook) at the part that passes it, whatever the handler made of the
/// cut-off payload; the parts read before it stay charged.
#[actix_web::test]
async fn a_chunked_upload_over_the_bytes_budget_is_429_mid_stream() {
    let server = echo_both_and_bytes(&body_budgets());
    let first = post_chunked(server.addr, "/bytes", &[&[b'x'; 100], &[b'x'; 100]]).await;
    assert_eq!((first.status, first.body.len()), (200, 200), "{first:?}");
    // 56 left: the first 40 pass, the next 40 do not.
    let refused = post_chunked(server.addr, "/bytes", &[&[b'x'; 40], &[b'x'; 40]]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("content-type").as_deref(), Some("application/json"), "{refused:?}");
    assert!(refused.text().contains(r#""limit":"body_bytes""#), "{}", refused.text());
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(refused.header("x-ratelimit-limit").as_deref(), Some("256"), "{refused:?}");
    assert_eq!(refused.header("x-refused-by").as_deref(), Some("body_bytes"), "through the hook: {refused:?}");
    // 16 left.
    let rest = post(server.addr, "/bytes", &[b'z'; 16]).await;
    assert_eq!((rest.status, rest.header("x-ratelimit-remaining").as_deref()), (200, Some("0")), "{rest:?}");
    assert_eq!(post(server.addr, "/bytes", b"z").await.status, 429);
    server.stop().await;
}

/// The in-memory store behind futures that are not ready when first polled, as a remote store's
/// answers are: the middleware checks such a route through its asynchronous path, and a
/// payload's chunks are charged through the charge's futures (the path of a Redis store).
#[derive(Clone, Debug, Default)]
struct Remote(tollgate::MemoryStore);

impl tollgate::Store for Remote {
    type Limit = tollgate::store::MemoryLimit;

    fn register(&self, spec: &tollgate::LimitSpec) -> Result<Self::Limit, tollgate::StoreError> {
        self.0.register(spec)
    }

    async fn check<'a>(
        &'a self,
        checks: &'a [tollgate::Check<'a, Self::Limit>],
        out: &'a mut [tollgate::Snapshot],
    ) -> Result<bool, tollgate::StoreError> {
        tokio::task::yield_now().await;
        self.0.check(checks, out).await
    }

    fn block<'a>(
        &'a self,
        limit: &'a Self::Limit,
        key: tollgate::Key<'a>,
        duration: Duration,
    ) -> impl std::future::Future<Output = Result<(), tollgate::StoreError>> + Send + 'a {
        self.0.block(limit, key, duration)
    }
}

#[actix_web::test]
async fn a_chunked_upload_over_a_remote_bytes_budget_is_429_mid_stream() {
    let bytes = Policy::builder("body_bytes")
        .limit(Limit::new("body_bytes", "256/day".parse().unwrap()).key(KeyKind::ip()))
        .build_with(Remote::default())
        .unwrap();
    let limit = RateLimit::with_limits(Limits::<Remote>::empty()).route("/bytes", Limits::empty().body_bytes(bytes));
    let server = serve!(1, move || {
        App::new().wrap(limit.clone()).route("/bytes", web::post().to(|body: Bytes| async move { body }))
    });
    let first = post_chunked(server.addr, "/bytes", &[&[b'x'; 100], &[b'x'; 100]]).await;
    assert_eq!((first.status, first.body.len()), (200, 200), "{first:?}");
    let refused = post_chunked(server.addr, "/bytes", &[&[b'x'; 40], &[b'x'; 40]]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.text().contains(r#""limit":"body_bytes""#), "{}", refused.text());
    let rest = post(server.addr, "/bytes", &[b'z'; 16]).await;
    assert_eq!((rest.status, rest.header("x-ratelimit-remaining").as_deref()), (200, Some("0")), "{rest:?}");
    server.stop().await;
}

#[actix_web::test]
async fn a_chunked_body_is_cut_off_past_the_largest_body() {
    let limit = RateLimit::with_limits(Limits::new().max_body(64));
    let server = serve!(1, move || {
        App::new().wrap(limit.clone()).route("/echo", web::post().to(|body: Bytes| async move { body }))
    });
    let small = post_chunked(server.addr, "/echo", &[b"hello ", b"world"]).await;
    assert_eq!((small.status, small.text().as_str()), (200, "hello world"));
    let chunk = [b'z'; 40];
    let big = post_chunked(server.addr, "/echo", &[&chunk, &chunk]).await;
    assert_eq!(big.status, 413, "{big:?}");
    server.stop().await;
}

/// A chunked body that turns out longer than the largest body gets the core's JSON 413, the same
/// answer as a declared length over it, whatever the handler makes of the cut-off payload: a
/// lenient handler that stops at the first read error (and would otherwise answer 200 with half
/// the body), and a strict one (the `Bytes` extractor, which actix would answer in plain text).
/// The in-flight place is given back: the next request from the same client passes.
#[actix_web::test]
async fn a_streamed_body_over_the_largest_gets_the_cores_413_whatever_the_handler_does() {
    use futures_util::StreamExt;
    let limit =
        RateLimit::with_limits(Limits::new().max_body(64).in_flight(ConcurrencyLimiter::new("uploads").per_key(1)));
    let server = serve!(1, move || {
        App::new()
            .wrap(limit.clone())
            .route(
                "/lenient",
                web::post().to(|mut payload: web::Payload| async move {
                    let mut body = Vec::new();
                    while let Some(Ok(chunk)) = payload.next().await {
                        body.extend_from_slice(&chunk);
                    }
                    // Polled again past the error: still an error, never a clean end.
                    let again = payload.next().await;
                    assert!(matches!(again, None | Some(Err(_))), "data past the cut-off: {again:?}");
                    HttpResponse::Ok().body(body)
                }),
            )
            .route("/strict", web::post().to(|body: Bytes| async move { HttpResponse::Ok().body(body) }))
    });
    let chunk = [b'z'; 40];
    for path in ["/lenient", "/strict"] {
        let big = post_chunked(server.addr, path, &[&chunk, &chunk]).await;
        assert_eq!(big.status, 413, "{path}: {big:?}");
        assert_eq!(big.header("content-type").as_deref(), Some("application/json"), "{path}: {big:?}");
        assert_eq!(big.text(), r#"{"error":"payload_too_large","limit":64}"#, "{path}");
        let small = post_chunked(server.addr, path, &[&chunk]).await;
        assert_eq!((small.status, small.body.len()), (200, 40), "{path}: {small:?}");
    }
    server.stop().await;
}

#[actix_web::test]
async fn in_flight_lease_is_held_until_the_response_body_is_finished() {
    let limit = RateLimit::with_limits(Limits::new().in_flight(ConcurrencyLimiter::new("uploads").per_key(1)));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let (open, seen) = (Arc::clone(&gate), Arc::clone(&entered));
    let server = serve!(1, move || {
        let (open, seen) = (Arc::clone(&open), Arc::clone(&seen));
        App::new().wrap(limit.clone()).route(
            "/slow",
            web::get().to(move || {
                let open = Arc::clone(&open);
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    // The head goes out at once; the body's last chunk waits for the test.
                    let body = futures_util::stream::once(async move {
                        let _permit = open.acquire().await;
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"done"))
                    });
                    HttpResponse::Ok().streaming(body)
                }
            }),
        )
    });
    let slow = tokio::spawn(get(server.addr, "/slow", ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while entered.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first request never reached the handler");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first response's body is not finished: a second request from the same client is refused.
    let second = get(server.addr, "/slow", "").await;
    assert_eq!(second.status, 429, "{second:?}");
    assert_eq!(second.header("retry-after").as_deref(), Some("1"));
    gate.add_permits(1);
    let first = slow.await.unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "done"));
    // The body finished: the place is free again.
    gate.add_permits(1);
    assert_eq!(get(server.addr, "/slow", "").await.status, 200);
    server.stop().await;
}

#[actix_web::test]
async fn header_identity_tier_and_custom_keys() {
    let by_header = RateLimit::new(keyed(KeyKind::Header(http::HeaderName::from_static("x-api-key")), "1/hour"));
    let by_identity = RateLimit::new(keyed(KeyKind::identity(), "1/hour"));
    let by_custom = RateLimit::new(keyed(KeyKind::Custom, "1/hour"));
    let tiered = RateLimit::new(
        Policy::builder("tiers")
            .limit(
                Limit::new("tier", "1/hour".parse().unwrap()).key(KeyKind::ip()).tier("pro", "3/hour".parse().unwrap()),
            )
            .build()
            .unwrap(),
    );
    let server = serve!(1, move || {
        // The "auth" middleware runs first (wrapped last) and puts what it learnt in the extensions.
        let auth = |req: actix_web::dev::ServiceRequest, srv: &_| {
            let user = req.headers().get("x-user").and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
            if let Some(user) = user {
                req.extensions_mut().insert(Identity(Arc::clone(&user)));
                req.extensions_mut().insert(CustomKey(tollgate::OwnedKey::from(format!("custom-{user}").as_str())));
                req.extensions_mut().insert(Tier(user));
            }
            Service::call(srv, req)
        };
        App::new()
            .service(web::resource("/header").wrap(by_header.clone()).to(|| async { "ok" }))
            .service(web::resource("/identity").wrap(by_identity.clone()).to(|| async { "ok" }))
            .service(web::resource("/custom").wrap(by_custom.clone()).to(|| async { "ok" }))
            .service(web::resource("/tier").wrap(tiered.clone()).to(|| async { "ok" }))
            .wrap_fn(auth)
    });
    let a = server.addr;
    for path in ["/header", "/identity", "/custom"] {
        let (key_a, key_b) = if path == "/header" {
            ("x-api-key: a\r\n", "x-api-key: b\r\n")
        } else {
            ("x-user: alice\r\n", "x-user: bob\r\n")
        };
        assert_eq!(get(a, path, key_a).await.status, 200, "{path}");
        assert_eq!(get(a, path, key_a).await.status, 429, "{path}: the same key is counted");
        assert_eq!(get(a, path, key_b).await.status, 200, "{path}: another key has its own quota");
    }
    // Anonymous clients on an identity limit are counted by IP.
    assert_eq!(get(a, "/identity", "").await.status, 200);
    assert_eq!(get(a, "/identity", "").await.status, 429);
    // The "pro" tier gets 3, the others 1.
    let statuses = |header: &'static str| async move {
        let mut s = Vec::new();
        for _ in 0..4 {
            s.push(get(a, "/tier", header).await.status);
        }
        s
    };
    assert_eq!(statuses("x-user: pro\r\n").await, [200, 200, 200, 429]);
    server.stop().await;
}

#[actix_web::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let trusting = RateLimit::new(per_ip("1/hour"))
        .client_ip_resolver(ClientIpResolver::new().trust("127.0.0.0/8".parse().unwrap()));
    let untrusting = RateLimit::new(per_ip("1/hour"));
    let server = serve!(1, move || {
        App::new()
            .service(web::resource("/trusted").wrap(trusting.clone()).to(|| async { "ok" }))
            .service(web::resource("/untrusted").wrap(untrusting.clone()).to(|| async { "ok" }))
    });
    let a = server.addr;
    assert_eq!(get(a, "/trusted", "x-forwarded-for: 203.0.113.1\r\n").await.status, 200);
    assert_eq!(get(a, "/trusted", "x-forwarded-for: 203.0.113.1\r\n").await.status, 429);
    assert_eq!(
        get(a, "/trusted", "x-forwarded-for: 203.0.113.2\r\n").await.status,
        200,
        "another client behind the proxy"
    );
    assert_eq!(get(a, "/untrusted", "x-forwarded-for: 203.0.113.1\r\n").await.status, 200);
    assert_eq!(
        get(a, "/untrusted", "x-forwarded-for: 203.0.113.2\r\n").await.status,
        429,
        "from an untrusted peer the header is ignored: the same peer address"
    );
    server.stop().await;
}

#[actix_web::test]
async fn route_tables_route_and_global_keys_and_scopes() {
    let limit = RateLimit::new(keyed(KeyKind::Global, "100/hour"))
        .route("/items/{id}", Limits::new().policy(keyed(KeyKind::Route, "2/hour")))
        .route_methods(
            "/named",
            [actix_web::http::Method::POST],
            Limits::new().policy(keyed(KeyKind::Route, "1/hour")),
        );
    let scoped = RateLimit::new(keyed(KeyKind::Global, "1/hour"));
    let server = serve!(1, move || {
        App::new()
            .service(web::scope("/limited").wrap(scoped.clone()).route("/x", web::get().to(|| async { "ok" })))
            .service(
                web::scope("")
                    .wrap(limit.clone())
                    .route("/items/{id}", web::get().to(|| async { "item" }))
                    .route("/named", web::to(|| async { "named" }))
                    .route("/other", web::get().to(|| async { "other" })),
            )
    });
    let a = server.addr;
    // One bucket for the route pattern, whatever the id.
    assert_eq!(get(a, "/items/1", "").await.status, 200);
    assert_eq!(get(a, "/items/2", "").await.status, 200);
    let third = get(a, "/items/3", "").await;
    assert_eq!(third.status, 429);
    // The route's own table, not the default one.
    assert_eq!(third.header("x-ratelimit-limit").as_deref(), Some("2"));
    // Other paths get the default (global) limit.
    let other = get(a, "/other", "").await;
    assert_eq!((other.status, other.header("x-ratelimit-limit").as_deref()), (200, Some("100")));
    // A method-specific entry: GET takes the default, POST its own.
    assert_eq!(get(a, "/named", "").await.header("x-ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(post(a, "/named", b"").await.status, 200);
    assert_eq!(post(a, "/named", b"").await.status, 429);
    // The scope's own limit applies to it alone.
    assert_eq!(get(a, "/limited/x", "").await.status, 200);
    assert_eq!(get(a, "/limited/x", "").await.status, 429);
    server.stop().await;
}

#[actix_web::test]
async fn a_reported_route_name_is_the_route_key() {
    let limit = RateLimit::new(keyed(KeyKind::Route, "1/hour"));
    let server = serve!(1, move || {
        App::new().wrap(limit.clone()).route("/a/{x}", web::get().to(|| async { "ok" })).wrap_fn(|req, srv| {
            req.extensions_mut().insert(RouteName("shared".into()));
            srv.call(req)
        })
    });
    assert_eq!(get(server.addr, "/a/1", "").await.status, 200);
    assert_eq!(get(server.addr, "/a/2", "").await.status, 429, "both paths report one route");
    server.stop().await;
}

#[actix_web::test]
async fn delay_action_waits_instead_of_refusing() {
    let policy = Policy::builder("api")
        .limit(
            Limit::new("per_ip", "5/s burst 1".parse().unwrap())
                .key(KeyKind::ip())
                .on_exceed(OnExceed::Delay { max_wait: Duration::from_secs(2) }),
        )
        .build()
        .unwrap();
    let limit = RateLimit::new(policy);
    let server = serve!(1, move || App::new().wrap(limit.clone()).route("/", web::get().to(|| async { "ok" })));
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/", "").await.status, 200);
    }
    // Burst 1 at 5/s: the 2nd and 3rd wait 200 ms each.
    assert!(started.elapsed() >= Duration::from_millis(350), "{:?}", started.elapsed());
    server.stop().await;
}

#[actix_web::test]
async fn config_file_limits_through_the_engine() {
    let config: tollgate::Config = r#"
[policies.per_ip]
limits = [{ name = "per_ip", quota = "2/hour", key = "ip" }]

[[routes]]
path = "/api/hello"
methods = ["GET"]
policy = "per_ip"
"#
    .parse()
    .unwrap();
    let limit = RateLimit::from_config(&config).unwrap();
    let server = serve!(1, move || {
        App::new()
            .wrap(limit.clone())
            .route("/api/hello", web::get().to(|| async { "hello" }))
            .route("/api/hello", web::head().to(|| async { "hello" }))
            .route("/free", web::get().to(|| async { "free" }))
    });
    let a = server.addr;
    assert_eq!(get(a, "/api/hello", "").await.status, 200);
    // HEAD takes the GET entry's limits.
    let head = common::exchange(a, b"HEAD /api/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(get(a, "/api/hello", "").await.status, 429);
    for _ in 0..5 {
        assert_eq!(get(a, "/free", "").await.status, 200, "routes not in the configuration are not limited");
    }
    server.stop().await;
}

#[actix_web::test]
async fn in_flight_lease_is_released_when_the_client_drops_a_streaming_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = RateLimit::with_limits(Limits::new().in_flight(ConcurrencyLimiter::new("streams").per_key(1)));
    let server = serve!(1, move || {
        App::new().wrap(limit.clone()).route(
            "/stream",
            web::get().to(|| async {
                // An endless body, a chunk every 10 ms: it ends only when actix drops it.
                let ticks = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Ok::<_, std::convert::Infallible>(Bytes::from_static(b"tick\n")), ()))
                });
                HttpResponse::Ok().streaming(ticks)
            }),
        )
    });
    let mut client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    client.write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // The stream holds the client's one place.
    assert_eq!(get(server.addr, "/stream", "").await.status, 429);
    // The client vanishes mid-body: the place comes back once actix drops the body.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        probe.write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        let n = tokio::time::timeout(Duration::from_secs(10), probe.read(&mut buf)).await.unwrap().unwrap();
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the lease of the dropped stream was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// An error from the service inside the middleware counts under an adaptive limit by the status
/// actix-web answers it with: a 500 fails, a 401 (an auth middleware refusing) does not.
#[actix_web::test]
async fn service_errors_count_under_an_adaptive_limit_by_their_status() {
    let adaptive = tollgate::AdaptiveLimit::aimd(Duration::from_secs(10))
        .bounds(1, 100)
        .initial(40)
        .backoff(0.5)
        .window(Duration::from_nanos(1))
        .min_samples(1)
        .build()
        .unwrap();
    let limit =
        RateLimit::with_limits(Limits::new().in_flight(ConcurrencyLimiter::new("api").adaptive(adaptive.clone())));
    let server = serve!(1, move || {
        App::new()
            .route("/{any}", web::get().to(|| async { "ok" }))
            .wrap_fn(|req, srv| {
                let path = req.path().to_owned();
                let call = Service::call(srv, req);
                async move {
                    match path.as_str() {
                        "/denied" => Err(actix_web::error::ErrorUnauthorized("who are you")),
                        "/broken" => Err(actix_web::error::ErrorInternalServerError("broken")),
                        _ => call.await,
                    }
                }
            })
            .wrap(limit.clone())
    });
    assert_eq!(get(server.addr, "/ok", "").await.status, 200);
    assert_eq!(adaptive.current(), 40);
    assert_eq!(get(server.addr, "/denied", "").await.status, 401);
    assert_eq!(adaptive.current(), 40, "a 401 is no failure of the service");
    assert_eq!(get(server.addr, "/broken", "").await.status, 500);
    assert_eq!(adaptive.current(), 20, "a 500 is");
}
