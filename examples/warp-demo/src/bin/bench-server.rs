//! The benchmark's servers: `bench-server http PORT` serves the same minimal warp app
//! (`GET /` → `hello`) six ways on PORT..PORT+5: bare (`warp::serve`); with tollgate-warp on its
//! allow path (a per-IP quota nothing reaches) with its `X-RateLimit-*` headers; on its refusal
//! path (`1/h`: every request after the first gets the 429); on its allow path without headers
//! on allowed responses; with a filter that only writes three fixed `X-RateLimit-*` headers (the
//! floor for any limiter that writes them); and bare through `tollgate_warp::serve` and
//! `warp::service` without limits (what the server loop alone costs). Driven by `bench.sh`.
//!
//! `bench-server count CASE N` sends N requests through one case as a service, without sockets
//! (`bare`, `fixed_headers`, `tollgate`, `tollgate_no_headers`, `tollgate_refusal`, and
//! `tollgate_live`: tollgate's limits on a live engine), for callgrind to count instructions per
//! request (`instructions.sh`).

// A console tool.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;
use tokio::net::TcpListener;
use tollgate::engine::{Engine, Limits};
use tollgate::live::LiveEngine;
use tollgate::{HeaderOptions, KeyKind, Limit, Policy};
use tollgate_warp::RateLimit;
use tower_service::Service;
use warp::reply::Response;
use warp::{Filter, Reply};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A quota nothing in the bench exceeds, with a burst of a realistic size (the headers carry
/// numbers of a realistic size too); the same as the axum bench's.
const ALLOW: &str = "1000000000/s burst 100";
/// A quota every request after the first exceeds.
const REFUSE: &str = "1/h";

/// The app.
fn app() -> impl Filter<Extract = (&'static str,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::get().and(warp::path::end()).map(|| "hello")
}

fn limits(quota: &str, headers: HeaderOptions) -> Result<RateLimit, BoxError> {
    let policy = Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?;
    Ok(RateLimit::new(policy).headers(headers))
}

/// [`limits`] on a live engine: what a live configuration costs the allow path.
fn live_limits(quota: &'static str, headers: HeaderOptions) -> Result<RateLimit, BoxError> {
    let build = move |_: &tollgate::Config| {
        let policy = Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?;
        Ok(Engine::new(Limits::empty().policy(policy)).headers(headers))
    };
    Ok(RateLimit::with_engine(LiveEngine::new(tollgate::Config::default(), build)?))
}

/// The reply with three fixed rate-limit headers, as a limiter would write them.
fn fixed_headers(reply: &'static str) -> Response {
    const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    let mut response = reply.into_response();
    let h = response.headers_mut();
    h.insert(LIMIT, HeaderValue::from_static("100"));
    h.insert(REMAINING, HeaderValue::from_static("99"));
    h.insert(RESET, HeaderValue::from_static("1"));
    response
}

async fn bind(port: u16) -> Result<TcpListener, BoxError> {
    Ok(TcpListener::bind(("127.0.0.1", port)).await?)
}

async fn limited(port: u16, limit: RateLimit) -> Result<(), BoxError> {
    let listener = bind(port).await?;
    tokio::spawn(async move { tollgate_warp::serve(listener, limit.service(app())).await });
    Ok(())
}

async fn http(port: u16) -> Result<(), BoxError> {
    let (headers, no_headers) = (HeaderOptions::default(), HeaderOptions { x_ratelimit: false, ..Default::default() });
    let bare = bind(port).await?;
    tokio::spawn(warp::serve(app()).incoming(bare).run());
    limited(port + 1, limits(ALLOW, headers)?).await?;
    limited(port + 2, limits(REFUSE, headers)?).await?;
    limited(port + 3, limits(ALLOW, no_headers)?).await?;
    let floor = bind(port + 4).await?;
    tokio::spawn(warp::serve(app().map(fixed_headers)).incoming(floor).run());
    let own = bind(port + 5).await?;
    tokio::spawn(async move { tollgate_warp::serve(own, warp::service(app())).await });
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// One request through `service`, up to its response (dropped): what callgrind counts
/// (`--toggle-collect='*measured*'`).
/// Every case answers at once (no I/O, no wait), so the response future is polled once here.
#[inline(never)]
fn measured<S, B>(service: &mut S, request: Request<Full<Bytes>>) -> u16
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>>,
{
    match service.call(request).now_or_never() {
        Some(Ok(response)) => response.status().as_u16(),
        Some(Err(_)) => 0,
        None => 1,
    }
}

fn request() -> Request<Full<Bytes>> {
    let mut request =
        Request::get("/").header("host", "127.0.0.1:4200").body(Full::new(Bytes::new())).unwrap_or_default();
    request.extensions_mut().insert(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
    request
}

async fn run_count<S, B>(mut service: S, requests: u32) -> Result<(), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>>,
{
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..requests {
        *statuses.entry(measured(&mut service, request())).or_insert(0u32) += 1;
    }
    println!("statuses: {statuses:?}");
    Ok(())
}

/// `bench-server count CASE N`: N requests through one case as a service, no sockets (for
/// callgrind: instructions per request are deterministic, timings on this machine are not).
async fn count(case: &str, requests: u32) -> Result<(), BoxError> {
    let (headers, no_headers) = (HeaderOptions::default(), HeaderOptions { x_ratelimit: false, ..Default::default() });
    match case {
        "bare" => run_count(warp::service(app()), requests).await,
        "tollgate" => run_count(limits(ALLOW, headers)?.layer(warp::service(app())), requests).await,
        "tollgate_no_headers" => run_count(limits(ALLOW, no_headers)?.layer(warp::service(app())), requests).await,
        "tollgate_refusal" => run_count(limits(REFUSE, headers)?.layer(warp::service(app())), requests).await,
        "tollgate_live" => run_count(live_limits(ALLOW, headers)?.layer(warp::service(app())), requests).await,
        "fixed_headers" => run_count(warp::service(app().map(fixed_headers)), requests).await,
        other => Err(format!("no case {other}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("http") => http(args.next().and_then(|p| p.parse().ok()).unwrap_or(4200)).await,
        Some("count") => {
            let case = args.next().unwrap_or_default();
            count(&case, args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000)).await
        }
        _ => Err("usage: bench-server http [PORT] | bench-server count CASE [REQUESTS]".into()),
    }
}
