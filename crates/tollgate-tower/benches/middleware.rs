//! What the middleware itself costs per request, without sockets: the same axum router called
//! as a tower service bare, behind a no-op layer, with tollgate (as the README recommends for
//! axum: `axum_body()`; also without rate-limit headers, and with its own body types) and with
//! tower_governor (its default, and with `use_headers()`), on the allow path and the refusal
//! path, in one run.
//!
//! Run with: `cargo bench -p tollgate-tower --bench middleware`: criterion's timings, then the
//! heap allocations per request of each case, counted over 1000 requests.
//!
//! With `COUNT_CASE=<case> COUNT_REQUESTS=<n>` it only serves `n` requests to that case, in the
//! function `measured`: `scripts/instructions.sh` runs it so under callgrind and prints the
//! instructions per request of every case, a count that a shared machine's noise cannot blur.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::alloc::System;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::{RouterIntoService, get};
use criterion::Criterion;
use http::{Request, StatusCode};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::runtime::Runtime;
use tollgate::{HeaderOptions, KeyKind, Limit, Policy};
use tollgate_tower::RateLimitLayer;
use tower::{Service, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

fn request() -> Request<Body> {
    let mut r = Request::get("/").body(Body::empty()).unwrap();
    r.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
    r
}

fn per_ip(quota: &str) -> Policy {
    Policy::builder("api").limit(Limit::new("per_ip", quota.parse().unwrap()).key(KeyKind::ip())).build().unwrap()
}

/// Every case: its name, the router, and the status each request gets.
fn cases() -> Vec<(&'static str, Router, StatusCode)> {
    let (allow, refuse) = ("1000000000/s", "1/h");
    let no_headers = HeaderOptions { x_ratelimit: false, ..HeaderOptions::default() };
    let governor = |allow: bool, headers: bool| {
        let mut builder = GovernorConfigBuilder::default();
        if allow {
            builder.per_nanosecond(1).burst_size(1_000_000_000);
        } else {
            builder.per_second(3600).burst_size(1);
        }
        if headers {
            app().layer(GovernorLayer::new(Arc::new(builder.use_headers().finish().unwrap())))
        } else {
            app().layer(GovernorLayer::new(Arc::new(builder.finish().unwrap())))
        }
    };
    let (ok, too_many) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    vec![
        ("bare", app(), ok),
        ("no-op_layer", app().layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r)), ok),
        ("tollgate", app().layer(RateLimitLayer::new(per_ip(allow)).axum_body()), ok),
        ("tollgate_no_headers", app().layer(RateLimitLayer::new(per_ip(allow)).headers(no_headers).axum_body()), ok),
        ("tollgate_wrapped_bodies", app().layer(RateLimitLayer::new(per_ip(allow))), ok),
        ("tower_governor", governor(true, false), ok),
        ("tower_governor_headers", governor(true, true), ok),
        ("tollgate_refusal", app().layer(RateLimitLayer::new(per_ip(refuse)).axum_body()), too_many),
        ("tower_governor_refusal", governor(false, false), too_many),
    ]
}

/// One request through the service, its status checked.
fn one(rt: &Runtime, svc: &mut RouterIntoService<Body>, status: StatusCode) -> Response {
    rt.block_on(async {
        let res = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(res.status(), status);
        res
    })
}

/// `n` requests: what callgrind counts (`scripts/instructions.sh`).
#[inline(never)]
fn measured(rt: &Runtime, svc: &mut RouterIntoService<Body>, status: StatusCode, n: usize) {
    for _ in 0..n {
        drop(one(rt, svc, status));
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// The first requests of a refusal case are allowed (the burst): spend them first.
fn warm_up(rt: &Runtime, svc: &mut RouterIntoService<Body>) {
    for _ in 0..100 {
        drop(rt.block_on(async { svc.ready().await.unwrap().call(request()).await.unwrap() }));
    }
}

fn main() {
    if let Ok(name) = std::env::var("COUNT_CASE") {
        let n = std::env::var("COUNT_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
        let (_, router, status) = cases().into_iter().find(|(case, ..)| *case == name).expect("no such case");
        let rt = runtime();
        let mut svc = router.into_service::<Body>();
        warm_up(&rt, &mut svc);
        let region = Region::new(GLOBAL);
        measured(&rt, &mut svc, status, n);
        let allocations = region.change().allocations as f64 / n as f64;
        eprintln!("{name}: {allocations:.1} heap allocations per request");
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut allocations = Vec::new();
    for (name, router, status) in cases() {
        let rt = runtime();
        let mut svc = router.into_service::<Body>();
        warm_up(&rt, &mut svc);
        c.bench_function(&format!("middleware/{name}"), |b| b.iter(|| black_box(one(&rt, &mut svc, status))));
        let region = Region::new(GLOBAL);
        measured(&rt, &mut svc, status, 1000);
        allocations.push((name, region.change().allocations as f64 / 1000.0));
    }
    c.final_summary();
    for (name, per_request) in allocations {
        eprintln!("middleware/{name}: {per_request:.1} heap allocations per request");
    }
}
