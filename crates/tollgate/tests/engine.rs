//! The HTTP engine through a request view of no framework: what every adapter relies on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode};
use tollgate::engine::{Engine, Limits, WebSocketLimits};
use tollgate::request::{RequestHeaders, RequestView};
use tollgate::websocket::MessageLimits;
use tollgate::{ClientIpResolver, ConcurrencyLimiter, KeyKind, Limit, Policy};

/// A request of a pretend framework: what an adapter would fill from its own request type.
struct Req {
    method: &'static str,
    path: &'static str,
    route: Option<&'static str>,
    peer: IpAddr,
    headers: HeaderMap,
    http1: bool,
    exact: Option<u64>,
    identity: Option<&'static str>,
}

impl Req {
    fn get(path: &'static str) -> Self {
        Req {
            method: "GET",
            path,
            route: None,
            peer: "192.0.2.1".parse().unwrap(),
            headers: HeaderMap::new(),
            http1: true,
            exact: None,
            identity: None,
        }
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn from(mut self, peer: &str) -> Self {
        self.peer = peer.parse().unwrap();
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.append(name, value.parse().unwrap());
        self
    }
}

impl RequestView for Req {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn matched_route(&self) -> Option<&str> {
        self.route
    }
    fn peer_ip(&self) -> Option<IpAddr> {
        Some(self.peer)
    }
    fn headers(&self) -> &(dyn RequestHeaders + Sync) {
        &self.headers
    }
    fn is_http1(&self) -> bool {
        self.http1
    }
    fn exact_body_len(&self) -> Option<u64> {
        self.exact
    }
    fn identity(&self) -> Option<&str> {
        self.identity
    }
}

fn per(name: &'static str, quota: &str, key: KeyKind) -> Policy {
    Policy::builder(name).limit(Limit::new(name, quota.parse().unwrap()).key(key)).build().unwrap()
}

/// The status the engine answers `request` with (200: admitted).
fn status(engine: &Engine, request: &Req) -> u16 {
    let limits = engine.limits_for(request);
    match engine.check_now(limits, request) {
        Ok(_) => 200,
        Err(refusal) => refusal.status().as_u16(),
    }
}

#[test]
fn routes_match_patterns_most_specific_first_and_head_takes_get() {
    let engine = Engine::new(Limits::new().policy(per("default", "100/min", KeyKind::ip())))
        .route_methods("/items/{id}", [Method::GET], Limits::new().policy(per("item", "1/min", KeyKind::ip())))
        .route("/items/new", Limits::new().policy(per("new", "2/min", KeyKind::ip())))
        .route("/files/{*rest}", Limits::new().policy(per("files", "1/min", KeyKind::Route)));
    let name = |path| engine.route_of(&Req::get(path)).map(str::to_owned);
    assert_eq!(name("/items/7").as_deref(), Some("/items/{id}"));
    assert_eq!(name("/items/new").as_deref(), Some("/items/new"));
    assert_eq!(name("/files/a/b/c").as_deref(), Some("/files/{*rest}"));
    assert_eq!(name("/other"), None);

    // GET-only entry: a HEAD takes it, a POST takes the default limits.
    assert_eq!(status(&engine, &Req::get("/items/7")), 200);
    assert_eq!(status(&engine, &Req::get("/items/8").method("HEAD")), 429, "HEAD counts against the GET limit");
    assert_eq!(status(&engine, &Req::get("/items/9").method("POST")), 200);
    assert_eq!(status(&engine, &Req::get("/items/9").method("POST")), 200);

    // The matched route is the route key: every path under the catch-all shares one count.
    assert_eq!(status(&engine, &Req::get("/files/a").from("192.0.2.2")), 200);
    assert_eq!(status(&engine, &Req::get("/files/b").from("192.0.2.3")), 429);
}

#[test]
fn every_spelling_a_router_serves_takes_its_route_limits() {
    let engine = Engine::new(Limits::new())
        .route("/login", Limits::new().policy(per("login", "1/min", KeyKind::ip())))
        .route("/items/{id}", Limits::new().policy(per("items", "1/min", KeyKind::Route)));
    let at = |path| engine.match_path(path).map(str::to_owned);
    // Percent-encoded bytes are what actix-web's router decodes; a trailing `/` what warp serves.
    for path in ["/login", "/%6Cogin", "/l%6F%67in", "/login/", "/%6cogin/"] {
        assert_eq!(at(path).as_deref(), Some("/login"), "{path}");
    }
    assert_eq!(at("/items/a%2Fb").as_deref(), Some("/items/{id}"), "an encoded / stays in its segment");
    assert_eq!(at("/items/a/b"), None);
    assert_eq!(at("/login%2F"), None);
    assert_eq!(at("/%FF%FE"), None, "bytes that are not text are matched as written");
    assert_eq!(at("/log%"), None);
    assert_eq!(status(&engine, &Req::get("/login")), 200);
    assert_eq!(status(&engine, &Req::get("/%6Cogin")), 429, "the same route, the same count");
    assert_eq!(status(&engine, &Req::get("/login/").from("192.0.2.9")), 200);
    assert_eq!(status(&engine, &Req::get("/l%6Fgin/").from("192.0.2.9")), 429);
}

#[test]
fn a_route_the_adapter_reports_wins_over_the_path() {
    let engine = Engine::new(Limits::new())
        .route("/users/{id}", Limits::new().policy(per("users", "1/min", KeyKind::ip())))
        .route("named", Limits::new().policy(per("named", "1/min", KeyKind::ip())));
    let mut request = Req::get("/anything");
    request.route = Some("named");
    assert_eq!(status(&engine, &request), 200);
    assert_eq!(status(&engine, &request), 429);
    // Without the report, `/anything` is on no route: unlimited.
    for _ in 0..3 {
        assert_eq!(status(&engine, &Req::get("/anything")), 200);
    }
}

#[test]
fn allowed_plans_carry_headers_and_refusals_render_them() {
    let engine = Engine::new(Limits::new().policy(per("api", "2/min", KeyKind::ip())));
    let request = Req::get("/");
    let limits = engine.limits_for(&request);
    let admit = engine.check_now(limits, &request).unwrap();
    assert!(admit.wait.is_zero());
    let mut headers = HeaderMap::new();
    assert!(admit.response.apply(StatusCode::OK, &mut headers).is_none());
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "1");

    // The same fields into another framework's map, through a `HeaderSink` of its own.
    struct Pairs(Vec<(String, Vec<u8>)>);
    impl tollgate::HeaderSink for Pairs {
        fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) {
            self.0.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
        }
    }
    let admit = engine.check_now(limits, &request).unwrap();
    let mut fields = Pairs(Vec::new());
    let _ = admit.response.apply(StatusCode::OK, &mut fields);
    assert!(fields.0.contains(&("x-ratelimit-remaining".to_owned(), b"0".to_vec())), "{:?}", fields.0);

    let refusal = engine.check_now(limits, &request).unwrap_err();
    assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal.decision().map(|d| d.policy), Some("api"));
    let (headers, body) = refusal.render();
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(&body[..], br#"{"error":"rate_limited","policy":"api","limit":"api","retry_after":30}"#);
}

#[test]
fn body_plan_413_411_and_the_length_of_bodiless_requests() {
    let bytes = per("bytes", "100/min", KeyKind::ip());
    let engine = Engine::new(Limits::new())
        .route("/upload", Limits::new().max_body(64))
        .route("/metered", Limits::new().body_bytes(bytes));
    let post = |path| Req::get(path).method("POST");

    let over = post("/upload").header("content-length", "65");
    assert_eq!(status(&engine, &over), 413);
    let refusal = engine.check_now(engine.limits_for(&over), &over).unwrap_err();
    assert_eq!(&refusal.render().1[..], br#"{"error":"payload_too_large","limit":64}"#);
    assert!(refusal.decision().is_none());

    // Within the limit: admitted, and the adapter is told the largest body to count as it streams.
    let fits = post("/upload").header("transfer-encoding", "chunked");
    let admit = engine.check_now(engine.limits_for(&fits), &fits).unwrap();
    assert_eq!(admit.max_body, Some(64));
    // What the body says of itself counts where there is no Content-Length.
    let mut sized = post("/upload").header("transfer-encoding", "chunked");
    sized.exact = Some(100);
    assert_eq!(status(&engine, &sized), 413);

    // Body bytes: the declared length is the cost; an HTTP/1 request without Content-Length or
    // Transfer-Encoding has no body and costs nothing; an HTTP/2 one of unknown length gets 411.
    assert_eq!(status(&engine, &post("/metered").header("content-length", "60")), 200);
    for _ in 0..5 {
        assert_eq!(status(&engine, &post("/metered")), 200, "no body, no cost");
    }
    let mut h2 = post("/metered");
    h2.http1 = false;
    assert_eq!(status(&engine, &h2), 411);
    assert_eq!(status(&engine, &post("/metered").header("content-length", "41")), 429, "60 + 41 > 100");
    assert_eq!(status(&engine, &post("/metered").header("content-length", "40")), 200);
    assert_eq!(status(&engine, &post("/metered").header("content-length", "101")), 413, "never fits");
}

#[test]
fn leases_are_held_by_the_plan_and_released_with_it() {
    let in_flight = ConcurrencyLimiter::new("in_flight").per_key(1);
    let engine = Engine::new(Limits::new().in_flight(in_flight.clone()));
    let request = Req::get("/");
    let limits = engine.limits_for(&request);
    let held = engine.check_now(limits, &request).unwrap();
    let refusal = engine.check_now(limits, &request).unwrap_err();
    assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal.render().0["retry-after"], "1");
    // The response takes the lease over (its body holds it); dropping it frees the place.
    let lease = held.response.apply(StatusCode::OK, &mut HeaderMap::new());
    assert!(lease.is_some());
    assert_eq!(in_flight.in_use(), 1);
    drop(lease);
    assert_eq!(in_flight.in_use(), 0);
    assert!(engine.check_now(limits, &request).is_ok());
}

#[test]
fn websocket_upgrades_hand_their_lease_to_the_socket_or_release_it() {
    let connections = ConcurrencyLimiter::new("ws").per_key(1);
    let ws = WebSocketLimits::new(connections.clone(), MessageLimits::new().messages("10/s".parse().unwrap()));
    let engine = Engine::new(Limits::new()).route("/ws", Limits::new().websocket(ws.key(KeyKind::identity())));
    let mut request = Req::get("/ws");
    request.identity = Some("alice");
    let limits = engine.limits_for(&request);

    let admit = engine.check_now(limits, &request).unwrap();
    let upgrade = admit.response.upgrade().cloned().expect("an upgrade lease");
    assert_eq!(upgrade.key().to_string(), "alice");
    assert_eq!(engine.check_now(limits, &request).unwrap_err().status(), StatusCode::TOO_MANY_REQUESTS);
    // The handler takes the lease: it outlives the 101 response.
    let socket_lease = upgrade.take();
    assert!(admit.response.apply(StatusCode::SWITCHING_PROTOCOLS, &mut HeaderMap::new()).is_none());
    assert_eq!(connections.in_use(), 1);
    drop(socket_lease);
    assert_eq!(connections.in_use(), 0);

    // An upgraded connection is no request in flight: with an in-flight limit on the route too,
    // the 101 gives its in-flight place back at once.
    let in_flight = ConcurrencyLimiter::new("in_flight").per_key(1);
    let both = Engine::new(
        Limits::new()
            .in_flight(in_flight.clone())
            .websocket(WebSocketLimits::new(ConcurrencyLimiter::new("ws2").per_key(5), MessageLimits::new())),
    );
    let upgraded = both.check_now(both.limits_for(&request), &request).unwrap();
    let _socket = upgraded.response.upgrade().and_then(|u| u.take());
    assert!(upgraded.response.apply(StatusCode::SWITCHING_PROTOCOLS, &mut HeaderMap::new()).is_none());
    assert_eq!(in_flight.in_use(), 0);
    assert!(both.check_now(both.limits_for(&request), &request).is_ok(), "a second socket");

    // A handler that never takes it: released when the response is finished.
    let admit = engine.check_now(limits, &request).unwrap();
    assert_eq!(connections.in_use(), 1);
    let _ = admit.response.apply(StatusCode::BAD_REQUEST, &mut HeaderMap::new());
    assert_eq!(connections.in_use(), 0);
}

#[test]
fn trusted_proxies_are_resolved_through_the_view_headers() {
    let engine = Engine::new(Limits::new().policy(per("api", "1/min", KeyKind::ip())))
        .client_ip_resolver(ClientIpResolver::new().trust("10.0.0.0/8".parse().unwrap()));
    let via_proxy = |client: &str| Req::get("/").from("10.0.0.1").header("x-forwarded-for", client);
    assert_eq!(status(&engine, &via_proxy("203.0.113.1")), 200);
    assert_eq!(status(&engine, &via_proxy("203.0.113.2")), 200, "another client behind the proxy");
    assert_eq!(status(&engine, &via_proxy("203.0.113.1")), 429);
    // From an untrusted peer the header is ignored: the peer's own quota.
    let spoofed = Req::get("/").from("198.51.100.7").header("x-forwarded-for", "203.0.113.9");
    assert_eq!(status(&engine, &spoofed), 200);
    let spoofed = Req::get("/").from("198.51.100.7").header("x-forwarded-for", "203.0.113.10");
    assert_eq!(status(&engine, &spoofed), 429);
}

#[tokio::test]
async fn the_async_path_decides_as_the_immediate_one() {
    let engine = Engine::new(Limits::new().policy(per("api", "1/min", KeyKind::ip())).max_body(8));
    let request = Req::get("/").method("POST").header("content-length", "4");
    let limits = engine.limits_for(&request);
    assert!(engine.check(limits, &request).await.is_ok());
    assert_eq!(engine.check(limits, &request).await.unwrap_err().status(), StatusCode::TOO_MANY_REQUESTS);
    let big = Req::get("/").method("POST").header("content-length", "9");
    assert_eq!(engine.check(limits, &big).await.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn an_engine_from_config_applies_its_routes() {
    let config: tollgate::Config = r#"
        trusted_proxies = ["10.0.0.0/8"]
        [policies.per_ip]
        limits = [{ name = "per_ip", quota = "1/min", key = "ip" }]
        [[routes]]
        path = "/api/items/{id}"
        methods = ["GET"]
        policy = "per_ip"
    "#
    .parse()
    .unwrap();
    let engine = Engine::from_config(&config).unwrap();
    assert_eq!(status(&engine, &Req::get("/api/items/1")), 200);
    assert_eq!(status(&engine, &Req::get("/api/items/2")), 429);
    assert_eq!(status(&engine, &Req::get("/api/other")), 200, "not a configured route");
    let proxied = Req::get("/api/items/3").from("10.1.1.1").header("x-forwarded-for", "198.51.100.1");
    assert_eq!(status(&engine, &proxied), 200);
}
