//! What the middleware itself costs per request, without sockets: the same axum router called
//! as a tower service bare, behind a no-op layer, with tollgate (as the README recommends for
//! axum: `axum_body()`; also without rate-limit headers, and with its own body types) and with
//! tower_governor (its default, and with `use_headers()`), on the allow path and the refusal
//! path, each inside the router (`Router::layer`) and around it, in one run. Two references
//! around the router: a layer that only adds three fixed `X-RateLimit-*` headers (what any
//! limiter's headers cost) and tollgate's `KeyedLimiter` in a hand-written layer (what its check
//! costs with nothing around it).
//!
//! Run with: `cargo bench -p tollgate-tower --bench middleware`: criterion's timings, then the
//! heap allocations per request of each case, counted over 1000 requests.
//!
//! With `COUNT_CASE=<case> COUNT_REQUESTS=<n>` it only serves `n` requests to that case, in the
//! function `measured`: `scripts/instructions.sh` runs it so under callgrind and prints the
//! instructions per request of every case, a count that a shared machine's noise cannot blur.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::alloc::System;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use criterion::Criterion;
use futures_util::future::Either;
use http::{Request, StatusCode};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::runtime::Runtime;
use tollgate::engine::{Engine, Limits};
use tollgate::{HeaderOptions, KeyKind, Limit, MemoryStore, Policy};
use tollgate_tower::{AxumBody, LiveEngine, RateLimitLayer};
use tower::{Layer, Service, ServiceExt};

#[macro_use]
mod apps;

use apps::{ALLOW, REFUSE, app, fixed_headers, per_ip, tollgate};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request() -> Request<Body> {
    let mut r = Request::get("/").body(Body::empty()).unwrap();
    r.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
    r
}

/// What runs each case: a service called as a router would be, and the status it answers.
trait Runner {
    fn run<S>(&mut self, name: &str, svc: S, status: StatusCode)
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>;
}

/// Every case, in two placements: the middleware inside the router (`Router::layer`, as most
/// axum apps add layers: axum boxes each layered route again) and around it (`layer.layer(router)`,
/// before routing, as `axum::serve` can serve any service).
fn cases(r: &mut impl Runner) {
    let no_headers = HeaderOptions { x_ratelimit: false, ..HeaderOptions::default() };
    let (ok, too_many) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    let noop = || tower::util::MapRequestLayer::new(|r: Request<Body>| r);
    let tollgate = |quota, headers| tollgate(quota, headers).unwrap();
    let on = HeaderOptions::default();
    // Inside the router.
    r.run("bare", app().into_service(), ok);
    r.run("no-op_layer", app().layer(noop()).into_service(), ok);
    r.run("tollgate", app().layer(tollgate(ALLOW, on)).into_service(), ok);
    r.run("tollgate_no_headers", app().layer(tollgate(ALLOW, no_headers)).into_service(), ok);
    r.run("tollgate_wrapped_bodies", app().layer(RateLimitLayer::new(per_ip(ALLOW).unwrap())).into_service(), ok);
    r.run("tollgate_live", app().layer(tollgate_live(ALLOW, on)).into_service(), ok);
    r.run("tower_governor", app().layer(governor!(true).unwrap()).into_service(), ok);
    r.run("tower_governor_headers", app().layer(governor!(true, headers).unwrap()).into_service(), ok);
    r.run("tollgate_refusal", app().layer(tollgate(REFUSE, on)).into_service(), too_many);
    r.run("tower_governor_refusal", app().layer(governor!(false).unwrap()).into_service(), too_many);
    r.run("fixed_headers", app().layer(fixed_headers()).into_service(), ok);
    // Around the router.
    r.run("around/no-op_layer", noop().layer(app().into_service()), ok);
    r.run("around/keyed_limiter", Keyed::new(app().into_service()), ok);
    r.run("around/fixed_headers", fixed_headers().layer(app().into_service()), ok);
    r.run("around/tollgate", tollgate(ALLOW, on).layer(app().into_service()), ok);
    r.run("around/tollgate_no_headers", tollgate(ALLOW, no_headers).layer(app().into_service()), ok);
    r.run("around/tollgate_live", tollgate_live(ALLOW, on).layer(app().into_service()), ok);
    r.run("around/tower_governor", governor!(true).unwrap().layer(app().into_service()), ok);
    r.run("around/tower_governor_headers", governor!(true, headers).unwrap().layer(app().into_service()), ok);
    r.run("around/tollgate_refusal", tollgate(REFUSE, on).layer(app().into_service()), too_many);
    r.run("around/tower_governor_refusal", governor!(false).unwrap().layer(app().into_service()), too_many);
}

/// [`tollgate`]'s layer on a [`LiveEngine`]: the same limits, the engine loaded per request from
/// the live engine's cell (what a live configuration costs the allow path).
fn tollgate_live(quota: &'static str, headers: HeaderOptions) -> RateLimitLayer<MemoryStore, AxumBody> {
    let build = move |_: &tollgate::Config| {
        let policy = Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?;
        Ok(Engine::new(Limits::empty().policy(policy)).headers(headers))
    };
    let live = LiveEngine::new(tollgate::Config::default(), build).unwrap();
    RateLimitLayer::with_engine(live).axum_body()
}

/// One request through the service, its status checked.
fn one<S>(rt: &Runtime, svc: &mut S, status: StatusCode) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    rt.block_on(async {
        let res = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(res.status(), status);
        res
    })
}

/// `n` requests: what callgrind counts (`scripts/instructions.sh`).
#[inline(never)]
fn measured<S>(rt: &Runtime, svc: &mut S, status: StatusCode, n: usize)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    for _ in 0..n {
        drop(one(rt, svc, status));
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// The first requests of a refusal case are allowed (the burst): spend them first.
fn warm_up<S>(rt: &Runtime, svc: &mut S)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    for _ in 0..100 {
        drop(rt.block_on(async { svc.ready().await.unwrap().call(request()).await.unwrap() }));
    }
}

/// `COUNT_CASE`: only `n` requests to that case, in `measured`, and its allocations per request.
struct Count {
    case: String,
    n: usize,
    found: bool,
}

impl Runner for Count {
    fn run<S>(&mut self, name: &str, mut svc: S, status: StatusCode)
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        if name != self.case {
            return;
        }
        self.found = true;
        let rt = runtime();
        warm_up(&rt, &mut svc);
        let region = Region::new(GLOBAL);
        measured(&rt, &mut svc, status, self.n);
        let allocations = region.change().allocations as f64 / self.n as f64;
        eprintln!("{name}: {allocations:.1} heap allocations per request");
    }
}

/// Criterion's timings of every case, and each one's allocations per request.
struct Bench {
    criterion: Criterion,
    allocations: Vec<(String, f64)>,
}

impl Runner for Bench {
    fn run<S>(&mut self, name: &str, mut svc: S, status: StatusCode)
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        let rt = runtime();
        warm_up(&rt, &mut svc);
        self.criterion
            .bench_function(&format!("middleware/{name}"), |b| b.iter(|| black_box(one(&rt, &mut svc, status))));
        let region = Region::new(GLOBAL);
        measured(&rt, &mut svc, status, 1000);
        self.allocations.push((name.to_owned(), region.change().allocations as f64 / 1000.0));
    }
}

fn main() {
    if let Ok(case) = std::env::var("COUNT_CASE") {
        let n = std::env::var("COUNT_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
        let mut count = Count { case, n, found: false };
        cases(&mut count);
        assert!(count.found, "no such case: {}", count.case);
        return;
    }
    let criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut bench = Bench { criterion, allocations: Vec::new() };
    cases(&mut bench);
    bench.criterion.final_summary();
    for (name, per_request) in bench.allocations {
        eprintln!("middleware/{name}: {per_request:.1} heap allocations per request");
    }
}

/// tollgate's [`KeyedLimiter`](tollgate::KeyedLimiter) by client IP in a hand-written layer:
/// the core's table and GCRA with nothing around them (no policy, headers, bodies or leases), the
/// floor of what the middleware's own check could cost.
#[derive(Clone)]
struct Keyed<S> {
    inner: S,
    limiter: Arc<tollgate::KeyedLimiter<std::net::IpAddr>>,
}

impl<S> Keyed<S> {
    fn new(inner: S) -> Self {
        Self { inner, limiter: Arc::new(tollgate::KeyedLimiter::new(ALLOW.parse().unwrap())) }
    }
}

impl<S: Service<Request<Body>, Response = Response, Error = Infallible>> Service<Request<Body>> for Keyed<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        match ip.map(|ip| self.limiter.check(&ip)) {
            Some(Ok(())) => Either::Left(self.inner.call(req)),
            _ => Either::Right(ready(Ok(Response::builder().status(429).body(Body::empty()).unwrap()))),
        }
    }
}
