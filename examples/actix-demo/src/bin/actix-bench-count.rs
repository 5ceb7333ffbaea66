//! The in-process count of the actix-web benchmark: `actix-bench-count CASE N` sends N requests
//! through one case's app as a service (`actix_web::test`, no sockets) inside `measured`, for
//! callgrind (`--toggle-collect='*measured*'`), and prints the heap allocations per request.
//! Cases: bare, noop, fixed_headers, tollgate, tollgate_no_headers, tollgate_refusal,
//! tollgate_live (tollgate's limits on a live engine), governor, governor_headers,
//! governor_refusal. Driven by `count.sh`.

// A console tool.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../bench_apps.rs"]
mod apps;

use actix_governor::Governor;
use actix_web::dev::Service;
use actix_web::{App, web};
use apps::{ALLOW, BoxError, REFUSE, fixed_headers, governor_builder, hello, tollgate};
use tollgate::engine::{Engine, Limits};
use tollgate::live::LiveEngine;
use tollgate::{HeaderOptions, KeyKind, Limit, Policy};
use tollgate_actix::RateLimit;

#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// [`tollgate`]'s limits on a live engine: what a live configuration costs the allow path.
fn tollgate_live(quota: &'static str, headers: HeaderOptions) -> Result<RateLimit, BoxError> {
    let build = move |_: &tollgate::Config| {
        let policy = Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?;
        Ok(Engine::new(Limits::empty().policy(policy)).headers(headers))
    };
    Ok(RateLimit::with_engine(LiveEngine::new(tollgate::Config::default(), build)?))
}

/// `requests` requests through `app`; how many were allowed.
async fn send<S, B>(app: &S, requests: usize) -> usize
where
    S: Service<actix_http::Request, Response = actix_web::dev::ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let peer: std::net::SocketAddr = ([203, 0, 113, 9], 50000).into();
    let mut ok = 0;
    for _ in 0..requests {
        let request = actix_web::test::TestRequest::get().uri("/").peer_addr(peer).to_request();
        let response = actix_web::test::call_service(app, request).await;
        ok += usize::from(response.status().is_success());
        drop(actix_web::test::read_body(response).await);
    }
    ok
}

/// A future whose every poll runs inside [`measured_poll`], the one function callgrind counts.
struct Measured<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for Measured<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        measured_poll(self.0.as_mut(), cx)
    }
}

#[inline(never)]
fn measured_poll<F: std::future::Future>(
    future: std::pin::Pin<&mut F>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<F::Output> {
    future.poll(cx)
}

macro_rules! count {
    ($requests:expr, $app:expr) => {{
        let app = actix_web::test::init_service($app.route("/", web::get().to(hello))).await;
        // Warmed up outside `measured`: one-time set-up is not counted per request.
        send(&app, 100).await;
        let before = GLOBAL.stats();
        let ok = Measured(Box::pin(send(&app, $requests))).await;
        let allocs = (GLOBAL.stats() - before).allocations;
        println!("{ok} of {} allowed; {:.2} heap allocations per request", $requests, allocs as f64 / $requests as f64);
    }};
}

/// N requests through the in-process service of `case`.
async fn count(case: &str, requests: usize) -> Result<(), BoxError> {
    let (headers, no_headers) = (HeaderOptions::default(), HeaderOptions { x_ratelimit: false, ..Default::default() });
    match case {
        "bare" => count!(requests, App::new()),
        "tollgate" => count!(requests, App::new().wrap(tollgate(ALLOW, headers)?)),
        "tollgate_no_headers" => count!(requests, App::new().wrap(tollgate(ALLOW, no_headers)?)),
        "tollgate_refusal" => count!(requests, App::new().wrap(tollgate(REFUSE, headers)?)),
        "tollgate_live" => count!(requests, App::new().wrap(tollgate_live(ALLOW, headers)?)),
        "governor" => {
            count!(requests, App::new().wrap(Governor::new(&governor_builder(true).finish().ok_or("config")?)));
        }
        "governor_headers" => {
            count!(
                requests,
                App::new().wrap(Governor::new(&governor_builder(true).use_headers().finish().ok_or("config")?))
            );
        }
        "governor_refusal" => {
            count!(requests, App::new().wrap(Governor::new(&governor_builder(false).finish().ok_or("config")?)));
        }
        "noop" => count!(requests, App::new().wrap_fn(|req, srv| srv.call(req))),
        "fixed_headers" => count!(requests, App::new().wrap_fn(fixed_headers)),
        _ => return Err(format!("unknown case {case}").into()),
    }
    Ok(())
}

#[actix_web::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(case), requests) = (args.next(), args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000)) else {
        return Err("usage: actix-bench-count CASE [REQUESTS]".into());
    };
    count(&case, requests).await
}
