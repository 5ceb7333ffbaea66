//! What the middleware itself costs per request, without sockets: the same axum router called
//! as a tower service bare, behind a no-op layer, with tollgate (as the README recommends for
//! axum: `axum_body()`; also without rate-limit headers, and with its own body types) and with
//! tower_governor (its default, and with `use_headers()`), in one run.
//!
//! Run with: `cargo bench -p tollgate-tower --bench middleware`
//!
//! At the end it prints the heap allocations per request of each, counted over 1000 requests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::alloc::System;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tollgate::{KeyKind, Limit, Policy};
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

fn run(c: &mut Criterion, name: &str, router: Router) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut svc = router.into_service::<Body>();
    let mut one = move || {
        rt.block_on(async {
            let res = svc.ready().await.unwrap().call(request()).await.unwrap();
            assert!(res.status().is_success());
            res
        })
    };
    c.bench_function(name, |b| b.iter(|| black_box(one())));
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        drop(one());
    }
    let allocations = region.change().allocations as f64 / 1000.0;
    eprintln!("{name}: {allocations:.1} heap allocations per request");
}

fn middleware(c: &mut Criterion) {
    run(c, "middleware/bare", app());
    run(c, "middleware/no-op_layer", app().layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r)));
    let policy = Policy::builder("api")
        .limit(Limit::new("per_ip", "1000000000/s".parse().unwrap()).key(KeyKind::ip()))
        .build()
        .unwrap();
    run(c, "middleware/tollgate", app().layer(RateLimitLayer::new(policy.clone()).axum_body()));
    let no_headers = tollgate::HeaderOptions { x_ratelimit: false, ..Default::default() };
    run(
        c,
        "middleware/tollgate_no_headers",
        app().layer(RateLimitLayer::new(policy.clone()).headers(no_headers).axum_body()),
    );
    run(c, "middleware/tollgate_wrapped_bodies", app().layer(RateLimitLayer::new(policy)));
    let config = GovernorConfigBuilder::default().per_nanosecond(1).burst_size(1_000_000_000).finish().unwrap();
    run(c, "middleware/tower_governor", app().layer(GovernorLayer::new(Arc::new(config))));
    let config =
        GovernorConfigBuilder::default().per_nanosecond(1).burst_size(1_000_000_000).use_headers().finish().unwrap();
    run(c, "middleware/tower_governor_headers", app().layer(GovernorLayer::new(Arc::new(config))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = middleware
}
criterion_main!(benches);
