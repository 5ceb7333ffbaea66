//! The HTTP middleware over real sockets with a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use common::{get_ok, send, serve, serve_service};
use http::{Request, Response, StatusCode};
use http_body_util::{Full, StreamBody};
use tollgate::{ClientIpResolver, ConcurrencyLimiter, ForwardingHeader, KeyKind, Limit, MissingKey, OnExceed, Policy};
use tollgate_tower::{Limits, RateLimitLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn per_ip(quota: &str) -> Policy {
    Policy::builder("per_ip").limit(Limit::new("per_ip", quota.parse().unwrap()).key(KeyKind::ip())).build().unwrap()
}

fn hello_app(layer: RateLimitLayer) -> Router {
    Router::new().route("/hello", get(|| async { "hello" })).layer(layer)
}

/// The body modes: the middleware's own body types, or axum's `Body` passed on as is.
#[derive(Clone, Copy, Debug)]
enum Bodies {
    Wrapped,
    Axum,
}

fn limited(router: Router, layer: RateLimitLayer, bodies: Bodies) -> Router {
    match bodies {
        Bodies::Wrapped => router.layer(layer),
        Bodies::Axum => router.layer(layer.axum_body()),
    }
}

#[tokio::test]
async fn refuses_after_the_burst_with_headers_and_json_body() {
    refuses_after_the_burst(Bodies::Wrapped).await;
}

#[tokio::test]
async fn refuses_after_the_burst_passing_axum_bodies_on() {
    refuses_after_the_burst(Bodies::Axum).await;
}

async fn refuses_after_the_burst(bodies: Bodies) {
    let app =
        limited(Router::new().route("/hello", get(|| async { "hello" })), RateLimitLayer::new(per_ip("3/min")), bodies);
    let addr = serve(app).await;
    for remaining in ["2", "1", "0"] {
        let ok = get_ok(addr, "/hello").await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.text(), "hello");
        assert_eq!(ok.header("x-ratelimit-limit"), "3");
        assert_eq!(ok.header("x-ratelimit-remaining"), remaining);
        assert!(ok.headers.get("retry-after").is_none());
    }
    let refused = get_ok(addr, "/hello").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "20");
    assert_eq!(refused.header("x-ratelimit-limit"), "3");
    assert_eq!(refused.header("x-ratelimit-remaining"), "0");
    assert_eq!(refused.header("x-ratelimit-reset"), "60");
    assert_eq!(refused.header("content-type"), "application/json");
    assert_eq!(refused.text(), r#"{"error":"rate_limited","policy":"per_ip","limit":"per_ip","retry_after":20}"#);
}

#[tokio::test]
async fn ietf_headers_and_custom_refusal() {
    let headers = tollgate::HeaderOptions { ietf: true, ..Default::default() };
    let layer = RateLimitLayer::new(per_ip("1/min")).headers(headers).on_refusal(|decision, mut response| {
        *response.body_mut() = Bytes::from(format!("slow down, {}", decision.retry_after_secs()));
        response
    });
    let addr = serve(hello_app(layer)).await;
    let ok = get_ok(addr, "/hello").await;
    assert_eq!(ok.header("ratelimit-policy"), r#""per_ip";q=1;w=60"#);
    assert_eq!(ok.header("ratelimit"), r#""per_ip";r=0;t=60"#);
    // The X-RateLimit style stays on beside it (the middleware keeps the whole limit for both).
    assert_eq!(ok.header("x-ratelimit-limit"), "1");
    assert_eq!(ok.header("x-ratelimit-remaining"), "0");
    assert_eq!(ok.header("x-ratelimit-reset"), "60");
    let refused = get_ok(addr, "/hello").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.text(), "slow down, 60");
    assert_eq!(refused.header("retry-after"), "60");
}

#[tokio::test]
async fn with_every_header_style_off_only_refusals_carry_retry_after() {
    let headers = tollgate::HeaderOptions { x_ratelimit: false, ietf: false, spring: false, ..Default::default() };
    let addr = serve(hello_app(RateLimitLayer::new(per_ip("1/min")).headers(headers))).await;
    let ok = get_ok(addr, "/hello").await;
    assert_eq!(ok.status, StatusCode::OK);
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-replenish-rate",
        "x-ratelimit-burst-capacity",
        "retry-after",
    ] {
        assert!(ok.headers.get(name).is_none(), "{name} on an allowed response");
    }
    let refused = get_ok(addr, "/hello").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "60");
    assert!(refused.headers.get("x-ratelimit-limit").is_none());
    assert_eq!(refused.text(), r#"{"error":"rate_limited","policy":"per_ip","limit":"per_ip","retry_after":60}"#);
}

#[tokio::test]
async fn x_forwarded_for_ignored_from_untrusted_peer() {
    // 127.0.0.1 is not a trusted proxy here: forged headers cannot buy a fresh quota.
    let layer = RateLimitLayer::new(per_ip("2/min"))
        .client_ip_resolver(ClientIpResolver::new().trust("10.0.0.0/8".parse().unwrap()));
    let addr = serve(hello_app(layer)).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let req = common::get("/hello").header("x-forwarded-for", format!("203.0.113.{i}")).body(Full::default());
        statuses.push(send(addr, req.unwrap()).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn x_forwarded_for_honoured_from_trusted_proxy() {
    let layer = RateLimitLayer::new(per_ip("2/min"))
        .client_ip_resolver(ClientIpResolver::new().trust("127.0.0.0/8".parse().unwrap()));
    let addr = serve(hello_app(layer)).await;
    let from = |client: &'static str| {
        common::get("/hello")
            .header("x-forwarded-for", format!("198.51.100.1, {client}"))
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(addr, from("203.0.113.1")).await.status, StatusCode::OK);
    assert_eq!(send(addr, from("203.0.113.1")).await.status, StatusCode::OK);
    assert_eq!(send(addr, from("203.0.113.1")).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own quota; the forged left entry is ignored.
    assert_eq!(send(addr, from("203.0.113.2")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_is_read_only_when_named() {
    let forwarded = |n: u32| {
        common::get("/hello").header("forwarded", format!(r#"for="[2001:db8:{n}::1]:4711""#)).body(Full::default())
    };
    // By default only X-Forwarded-For is read: a `Forwarded` a proxy passed on cannot pick a key.
    let trusting = ClientIpResolver::new().trust("127.0.0.0/8".parse().unwrap());
    let addr = serve(hello_app(RateLimitLayer::new(per_ip("1/min")).client_ip_resolver(trusting.clone()))).await;
    assert_eq!(send(addr, forwarded(1).unwrap()).await.status, StatusCode::OK);
    assert_eq!(send(addr, forwarded(2).unwrap()).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Named, it is: each client has its own quota.
    let resolver = trusting.headers([ForwardingHeader::Forwarded]);
    let addr = serve(hello_app(RateLimitLayer::new(per_ip("1/min")).client_ip_resolver(resolver))).await;
    assert_eq!(send(addr, forwarded(1).unwrap()).await.status, StatusCode::OK);
    assert_eq!(send(addr, forwarded(2).unwrap()).await.status, StatusCode::OK);
    assert_eq!(send(addr, forwarded(1).unwrap()).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_client_quote_in_forwarded_cannot_choose_its_key() {
    // The proxy (127.0.0.1, trusted) appends its element to the `Forwarded` line the client sent
    // (`<client's value>, for=203.0.113.7`); the client leaves a quote open before it.
    let resolver = ClientIpResolver::new().trust("127.0.0.0/8".parse().unwrap()).headers([ForwardingHeader::Forwarded]);
    let addr = serve(hello_app(RateLimitLayer::new(per_ip("1/min")).client_ip_resolver(resolver))).await;
    let forged = |n: u32| {
        let value = format!(r#"for=6.6.6.{n};by=", for=203.0.113.7"#);
        common::get("/hello").header("forwarded", value).body(Full::default()).unwrap()
    };
    assert_eq!(send(addr, forged(1)).await.status, StatusCode::OK);
    assert_eq!(send(addr, forged(2)).await.status, StatusCode::TOO_MANY_REQUESTS, "a forged `for` bought a quota");
}

fn echo_app() -> Router {
    echo_app_with(Bodies::Wrapped)
}

fn echo_app_with(bodies: Bodies) -> Router {
    let bytes = Policy::builder("body_bytes")
        .limit(Limit::new("body_bytes", "4KiB/min".parse().unwrap()).key(KeyKind::ip()))
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_limits(Limits::new())
        .route("/echo", Limits::new().max_body(1024).body_bytes(bytes).policy(per_ip("100/s")));
    limited(Router::new().route("/echo", post(|body: Bytes| async move { body })), layer, bodies)
}

fn post_body(body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post("/echo").header("host", "localhost").body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn body_over_the_limit_is_413_before_reading() {
    let addr = serve(echo_app()).await;
    let ok = send(addr, post_body(vec![b'a'; 1024])).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body.len(), 1024);
    let big = send(addr, post_body(vec![b'a'; 1025])).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.text(), r#"{"error":"payload_too_large","limit":1024}"#);
}

#[tokio::test]
async fn error_responses_follow_the_configured_body_format() {
    let problem = tollgate::HeaderOptions { body: tollgate::BodyFormat::Problem, ..Default::default() };
    let layer = RateLimitLayer::with_limits(Limits::new()).route("/echo", Limits::new().max_body(8)).headers(problem);
    let app = Router::new().route("/echo", post(|body: Bytes| async move { body })).layer(layer);
    let addr = serve(app).await;
    let big = send(addr, post_body(vec![b'a'; 9])).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.header("content-type"), "application/problem+json");
    assert_eq!(
        big.text(),
        r#"{"type":"about:blank","title":"Payload Too Large","status":413,"error":"payload_too_large","limit":8}"#
    );
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    streamed_body_over_the_limit(Bodies::Wrapped).await;
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413_passing_axum_bodies_on() {
    streamed_body_over_the_limit(Bodies::Axum).await;
}

async fn streamed_body_over_the_limit(bodies: Bodies) {
    let addr = serve(echo_app_with(bodies)).await;
    // Within the limit, streamed and echoed whole.
    let ok = send(addr, post_body(vec![b'a'; 1024])).await;
    assert_eq!((ok.status, ok.body.len()), (StatusCode::OK, 1024));
    // No Content-Length: the body is counted while the handler reads it.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![b'x'; 400])))),
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/echo").header("host", "localhost").body(StreamBody::new(chunks)).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn body_bytes_per_period_is_429() {
    let addr = serve(echo_app()).await;
    for _ in 0..4 {
        assert_eq!(send(addr, post_body(vec![b'a'; 1000])).await.status, StatusCode::OK);
    }
    let refused = send(addr, post_body(vec![b'a'; 1000])).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.text().contains(r#""limit":"body_bytes""#), "{}", refused.text());
    assert!(!refused.header("retry-after").is_empty());
    // A smaller body still fits what is left.
    assert_eq!(send(addr, post_body(vec![b'a'; 96])).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_route_with_only_a_body_bytes_limit_shows_its_numbers() {
    let bytes = Policy::builder("body_bytes")
        .limit(Limit::new("body_bytes", "4KiB/min".parse().unwrap()).key(KeyKind::ip()))
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_limits(Limits::new()).route("/echo", Limits::new().body_bytes(bytes));
    let addr = serve(Router::new().route("/echo", post(|body: Bytes| async move { body })).layer(layer)).await;
    let first = send(addr, post_body(vec![b'a'; 1000])).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((first.header("x-ratelimit-limit"), first.header("x-ratelimit-remaining")), ("4096", "3096"));
    let second = send(addr, post_body(vec![b'a'; 96])).await;
    assert_eq!(second.header("x-ratelimit-remaining"), "3000");
}

#[tokio::test]
async fn in_flight_lease_is_held_until_the_body_finishes() {
    in_flight_lease_is_held_until_the_body_ends(Bodies::Wrapped).await;
}

#[tokio::test]
async fn in_flight_lease_is_held_until_the_body_finishes_passing_axum_bodies_on() {
    in_flight_lease_is_held_until_the_body_ends(Bodies::Axum).await;
}

async fn in_flight_lease_is_held_until_the_body_ends(bodies: Bodies) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let handler = move || {
        let rx = Arc::clone(&rx);
        async move {
            match rx.lock().await.take() {
                // The first response streams until the test ends it.
                Some(rx) => {
                    let stream = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
                    axum::body::Body::new(StreamBody::new(stream))
                }
                None => axum::body::Body::from("quick"),
            }
        }
    };
    let limiter = ConcurrencyLimiter::new("in_flight").per_key(1);
    let layer = RateLimitLayer::with_limits(Limits::new().in_flight(limiter.clone()));
    let addr = serve(limited(Router::new().route("/stream", get(handler)), layer, bodies)).await;

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let first = sender.send_request(common::get("/stream").body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // Headers are out but the body is not finished: the place is still taken.
    assert_eq!(limiter.in_use(), 1);
    let refused = get_ok(addr, "/stream").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "1");
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"done")))).await.unwrap();
    drop(tx);
    let body = http_body_util::BodyExt::collect(first.into_body()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    tokio::time::timeout(Duration::from_secs(5), async {
        while limiter.in_use() != 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the lease was not released");
    assert_eq!(get_ok(addr, "/stream").await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn delay_action_waits_instead_of_refusing() {
    let policy = Policy::builder("api")
        .limit(
            Limit::new("per_ip", "1/s".parse().unwrap())
                .key(KeyKind::ip())
                .on_exceed(OnExceed::Delay { max_wait: Duration::from_secs(5) }),
        )
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new().layer(RateLimitLayer::new(policy)).service_fn(|_req: Request<_>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let request = || {
        let mut req = Request::new(Full::<Bytes>::default());
        req.extensions_mut().insert("192.0.2.1:1000".parse::<std::net::SocketAddr>().unwrap());
        req
    };
    assert_eq!(service.ready().await.unwrap().call(request()).await.unwrap().status(), StatusCode::OK);
    let started = tokio::time::Instant::now();
    let delayed = service.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(delayed.status(), StatusCode::OK);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "waited {waited:?}");
}

#[tokio::test]
async fn route_layer_limits_only_the_routes_it_wraps_and_sees_the_matched_path() {
    let by_route = Policy::builder("per_route")
        .limit(Limit::new("per_route", "1/min".parse().unwrap()).key(KeyKind::Route))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route_layer(RateLimitLayer::new(by_route))
        .route("/free", get(|| async { "free" }));
    let addr = serve(app).await;
    assert_eq!(get_ok(addr, "/items/1").await.status, StatusCode::OK);
    // Another id is the same matched route (`/items/{id}`): one quota for the route.
    let refused = get_ok(addr, "/items/2").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-ratelimit-limit"), "1");
    for _ in 0..3 {
        let free = get_ok(addr, "/free").await;
        assert_eq!((free.status, free.text()), (StatusCode::OK, "free"));
        assert!(free.headers.get("x-ratelimit-limit").is_none(), "routes added after route_layer are not limited");
    }
    assert_eq!(get_ok(addr, "/nope").await.status, StatusCode::NOT_FOUND, "route_layer does not touch the fallback");
}

#[tokio::test]
async fn around_the_router_route_limits_match_the_uri_against_their_patterns() {
    // Keyed by route, refusing requests whose route is unknown: around the router the route is
    // the layer's pattern the URI matches.
    let by_route = Policy::builder("per_route")
        .limit(Limit::new("per_route", "1/min".parse().unwrap()).key(KeyKind::Route).on_missing_key(MissingKey::Refuse))
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(per_ip("100/min"))
        .route("/items/{id}", Limits::new().policy(by_route))
        .route_methods("/files/{*path}", [http::Method::GET], Limits::new().policy(per_ip("2/min")))
        .axum_body();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/files/{*path}", get(|| async { "file" }))
        .route("/hello", get(|| async { "hello" }));
    let addr = serve_service(layer.layer(app)).await;
    let item = get_ok(addr, "/items/1").await;
    assert_eq!((item.status, item.header("x-ratelimit-limit")), (StatusCode::OK, "1"));
    // Another id is the same route pattern: one quota for `/items/{id}`.
    let refused = get_ok(addr, "/items/2").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.text().contains(r#""limit":"per_route""#), "{}", refused.text());
    let file = get_ok(addr, "/files/a/b.txt").await;
    assert_eq!((file.status, file.header("x-ratelimit-limit")), (StatusCode::OK, "2"));
    let hello = get_ok(addr, "/hello").await;
    assert_eq!((hello.status, hello.header("x-ratelimit-limit")), (StatusCode::OK, "100"));
    // Before routing, a path no route serves is limited by the default limits too.
    let unknown = get_ok(addr, "/nope").await;
    assert_eq!((unknown.status, unknown.header("x-ratelimit-limit")), (StatusCode::NOT_FOUND, "100"));
}

#[tokio::test]
async fn identity_tier_custom_and_lease_keys_come_from_what_the_app_sets() {
    let per_user = Policy::builder("per_user")
        .limit(
            Limit::new("per_user", "1/min".parse().unwrap())
                .key(KeyKind::identity())
                .tier("pro", "2/min".parse().unwrap()),
        )
        .build()
        .unwrap();
    let per_account = Policy::builder("per_account")
        .limit(Limit::new("per_account", "1/min".parse().unwrap()).key(KeyKind::Custom))
        .build()
        .unwrap();
    // In-flight requests counted by a header, through the layer's lease key.
    let in_flight = ConcurrencyLimiter::new("in_flight").per_key(1);
    let layer = RateLimitLayer::new(per_user)
        .route("/account", Limits::new().policy(per_account).in_flight(in_flight.clone()))
        .lease_key(KeyKind::Header(http::HeaderName::from_static("x-user")));
    // What an authentication layer would do: identity, tier and an account key in the extensions.
    let auth = axum::middleware::map_request(|mut req: axum::extract::Request| async move {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
        let (user, tier, account) = (header("x-user"), header("x-tier"), header("x-account"));
        let ext = req.extensions_mut();
        if let Some(user) = user {
            ext.insert(tollgate_tower::Identity(user));
        }
        if let Some(tier) = tier {
            ext.insert(tollgate_tower::Tier(tier));
        }
        if let Some(account) = account {
            ext.insert(tollgate_tower::CustomKey(tollgate::OwnedKey::Text(account.as_ref().into())));
        }
        Ok::<_, Infallible>(req)
    });
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/account", get(|| async { "account" }))
        .layer(layer)
        .layer(auth);
    let addr = serve(app).await;
    let call = |path: &str, headers: &[(&str, &str)]| {
        let mut request = common::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(addr, request.body(Full::default()).unwrap())
    };
    let ok = |status: StatusCode| status == StatusCode::OK;
    // Alice (free tier) gets 1, Bob (pro) 2, each their own count; anonymous clients count by IP.
    assert!(ok(call("/hello", &[("x-user", "alice")]).await.status));
    assert_eq!(call("/hello", &[("x-user", "alice")]).await.status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..2 {
        let bob = call("/hello", &[("x-user", "bob"), ("x-tier", "pro")]).await;
        assert_eq!((bob.status, bob.header("x-ratelimit-limit")), (StatusCode::OK, "2"));
    }
    assert_eq!(call("/hello", &[("x-user", "bob"), ("x-tier", "pro")]).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(ok(get_ok(addr, "/hello").await.status));
    // The account route counts by the custom key, whoever calls.
    assert!(ok(call("/account", &[("x-account", "acme"), ("x-user", "carol")]).await.status));
    let refused = call("/account", &[("x-account", "acme"), ("x-user", "dave")]).await;
    assert_eq!((refused.status, refused.text().contains("per_account")), (StatusCode::TOO_MANY_REQUESTS, true));
    assert!(ok(call("/account", &[("x-account", "other"), ("x-user", "carol")]).await.status));
    assert_eq!(in_flight.in_use(), 0, "leases end with their responses");
}

#[tokio::test]
async fn the_default_bodies_take_any_request_body_type() {
    // `()` is no `http_body::Body`: the default mode only wraps it, as tests with `service_fn` do.
    let mut service = ServiceBuilder::new().layer(RateLimitLayer::new(per_ip("1/min"))).service_fn(
        |_req: Request<tollgate_tower::RequestBody<()>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    let request = || {
        let mut req = Request::new(());
        req.extensions_mut().insert("192.0.2.9:1000".parse::<std::net::SocketAddr>().unwrap());
        req
    };
    assert_eq!(service.ready().await.unwrap().call(request()).await.unwrap().status(), StatusCode::OK);
    let refused = service.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A shared lease store whose every key is at its maximum: the one thing this test needs from a
/// remote store (a refusal decided on the asynchronous path) without running one.
#[derive(Clone)]
struct AlwaysFull;

impl tollgate::LeaseStore for AlwaysFull {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        _key: tollgate::Key<'a>,
        per_key: Option<u32>,
        _global: Option<u32>,
    ) -> impl Future<
        Output = Result<Result<tollgate::ConnectionLease, tollgate::ConcurrencyDenied>, tollgate::StoreError>,
    > + Send
    + 'a {
        let denied = tollgate::ConcurrencyDenied::new(name, tollgate::ConcurrencyScope::PerKey, per_key.unwrap_or(0));
        std::future::ready(Ok(Err(denied)))
    }
}

#[tokio::test]
async fn a_refusal_decided_asynchronously_answers_a_second_poll() {
    let limiter = ConcurrencyLimiter::new("in_flight").per_key(1).shared(AlwaysFull);
    let mut service =
        ServiceBuilder::new().layer(RateLimitLayer::with_limits(Limits::new().in_flight(limiter))).service_fn(
            |_req: Request<_>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) },
        );
    let mut req = Request::new(Full::<Bytes>::default());
    req.extensions_mut().insert("192.0.2.1:1000".parse::<std::net::SocketAddr>().unwrap());
    let mut future = std::pin::pin!(service.ready().await.unwrap().call(req));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let first = loop {
        if let std::task::Poll::Ready(response) = future.as_mut().poll(&mut cx) {
            break response.unwrap();
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // Polled again, it answers (500) instead of resuming the finished checks, which would panic.
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(again)) => assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR),
        other => panic!("{:?}", other.map(|r| r.map(|r| r.status()))),
    }
}

/// A GET without a body has no `Content-Length`: its body's length is known all the same (0), so
/// a route with a body-bytes limit neither asks for a length (411) nor charges its largest body.
#[tokio::test]
async fn a_request_without_a_body_costs_no_body_bytes() {
    without_a_body(Bodies::Wrapped).await;
}

#[tokio::test]
async fn a_request_without_a_body_costs_no_body_bytes_passing_axum_bodies_on() {
    without_a_body(Bodies::Axum).await;
}

async fn without_a_body(bodies: Bodies) {
    // A day: what the budget regains while the test runs rounds to nothing, even under load.
    let bytes = || {
        Policy::builder("body_bytes")
            .limit(Limit::new("body_bytes", "4KiB/day".parse().unwrap()).key(KeyKind::ip()))
            .build()
            .unwrap()
    };
    let layer = RateLimitLayer::with_limits(Limits::new())
        .route("/bytes", Limits::new().body_bytes(bytes()))
        .route("/both", Limits::new().max_body(1024).body_bytes(bytes()));
    let routes = get(|| async { "ok" }).post(|b: Bytes| async move { b });
    let addr =
        serve(limited(Router::new().route("/bytes", routes.clone()).route("/both", routes), layer, bodies)).await;
    for i in 0..10 {
        for path in ["/bytes", "/both"] {
            let reply = get_ok(addr, path).await;
            assert_eq!(reply.status, StatusCode::OK, "GET {path} #{i}: {}", reply.text());
        }
    }
    // A body of unknown length (chunked) on the route without a largest body: counted while it
    // streams and charged its one byte, not refused 411.
    let chunks = futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"x")))]);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("/bytes").header("host", "localhost").body(StreamBody::new(chunks)).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A body with a length is charged it: the 4095 bytes left pass, the next byte does not.
    let post = |n: usize| {
        Request::post("/bytes").header("host", "localhost").body(Full::new(Bytes::from(vec![b'x'; n]))).unwrap()
    };
    assert_eq!(send(addr, post(4095)).await.status, StatusCode::OK);
    assert_eq!(send(addr, post(1)).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_body_refused_for_its_size_spends_nothing_from_the_policy() {
    let layer = RateLimitLayer::new(per_ip("1/min")).route("/echo", Limits::new().policy(per_ip("1/min")).max_body(16));
    let app = Router::new().route("/echo", post(|b: Bytes| async move { b }));
    let addr = serve(app.layer(layer)).await;
    let post = |n: usize| {
        Request::post("/echo").header("host", "localhost").body(Full::new(Bytes::from(vec![b'x'; n]))).unwrap()
    };
    assert_eq!(send(addr, post(17)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(send(addr, post(16)).await.status, StatusCode::OK, "the 413 spent the policy's one request");
    assert_eq!(send(addr, post(16)).await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// axum answers HEAD with the GET handler (its body dropped): a limit on a route's GET must count
/// HEAD too, or HEAD runs the handler unlimited.
#[tokio::test]
async fn a_get_only_route_limit_counts_head_too() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "results"
        }
    };
    let layer = RateLimitLayer::with_limits(Limits::new()).route_methods(
        "/search",
        [http::Method::GET],
        Limits::new().policy(per_ip("1/min")),
    );
    let addr = serve(Router::new().route("/search", get(handler)).layer(layer)).await;
    assert_eq!(get_ok(addr, "/search").await.status, StatusCode::OK);
    assert_eq!(get_ok(addr, "/search").await.status, StatusCode::TOO_MANY_REQUESTS);
    let head = || Request::head("/search").header("host", "localhost").body(Full::default()).unwrap();
    for _ in 0..3 {
        let reply = send(addr, head()).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "HEAD ran the GET handler unlimited");
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_adaptive_limit_counts_5xx_and_service_errors_as_failures() {
    // Latency never over the threshold; each response a window of its own; halved on a failure.
    let limit = tollgate::AdaptiveLimit::aimd(Duration::from_secs(10))
        .bounds(1, 100)
        .initial(40)
        .backoff(0.5)
        .window(Duration::from_nanos(1))
        .min_samples(1)
        .build()
        .unwrap();
    let limiter = ConcurrencyLimiter::new("api").adaptive(limit.clone());
    let layer = RateLimitLayer::with_limits(Limits::new().in_flight(limiter.clone())).axum_body();
    // A service error is a fault no real server produces on demand: the service here makes one.
    let service = layer.layer(tower::service_fn(|request: axum::extract::Request| async move {
        match request.uri().path() {
            "/ok" => Ok(Response::new(axum::body::Body::from("ok"))),
            "/fails" => Ok(Response::builder().status(502).body(axum::body::Body::empty()).unwrap()),
            _ => Err(std::io::Error::other("the service broke")),
        }
    }));
    let call = |path: &'static str| {
        let service = service.clone();
        async move { service.oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap()).await }
    };
    assert_eq!(call("/ok").await.unwrap().status(), StatusCode::OK);
    assert_eq!(limit.current(), 40, "a success: one in flight of 40 is no reason to grow");
    assert_eq!(call("/fails").await.unwrap().status(), StatusCode::BAD_GATEWAY);
    assert_eq!(limit.current(), 20, "a 5xx fails");
    assert!(call("/broken").await.is_err());
    assert_eq!(limit.current(), 10, "a service error fails");
    assert_eq!(limiter.in_use(), 0, "every lease given back");
}
