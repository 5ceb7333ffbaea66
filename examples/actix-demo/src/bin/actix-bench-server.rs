//! The benchmark's servers: `actix-bench-server http PORT` serves the same minimal actix-web app
//! (`GET /` → `hello`) nine ways, one worker each, on PORT..PORT+8: bare; tollgate allow (a
//! per-IP quota it never reaches, X-RateLimit headers); tollgate refuse (every request after the
//! first over the limit); tollgate allow without rate-limit headers; actix-governor allow (its
//! default: no headers); actix-governor allow with its headers (`use_headers`); actix-governor
//! refuse; a middleware that only writes three fixed `X-RateLimit-*` headers (what any limiter's
//! headers cost: the floor); a middleware that does nothing. Driven by `bench.sh`.

// A console tool.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../bench_apps.rs"]
mod apps;

use actix_governor::Governor;
use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};
use apps::{ALLOW, BoxError, REFUSE, fixed_headers, governor_builder, hello, tollgate};
use tollgate::HeaderOptions;

/// Serves `App::new().wrap(middleware).route("/", hello)` on `port` with one worker.
macro_rules! serve {
    ($port:expr, $make:expr) => {{
        let server = HttpServer::new(move || App::new().wrap($make).route("/", web::get().to(hello)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", $port))?
            .run();
        actix_web::rt::spawn(server);
    }};
}

async fn http(port: u16) -> Result<(), BoxError> {
    let (headers, no_headers) = (HeaderOptions::default(), HeaderOptions { x_ratelimit: false, ..Default::default() });
    // Bare.
    let server = HttpServer::new(|| App::new().route("/", web::get().to(hello)))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port))?
        .run();
    actix_web::rt::spawn(server);
    // One limiter per server, made outside its factory as an application would.
    let (allow, refuse, quiet) = (tollgate(ALLOW, headers)?, tollgate(REFUSE, headers)?, tollgate(ALLOW, no_headers)?);
    serve!(port + 1, allow.clone());
    serve!(port + 2, refuse.clone());
    serve!(port + 3, quiet.clone());
    let gov_allow = governor_builder(true).finish().ok_or("bad governor config")?;
    let gov_headers = governor_builder(true).use_headers().finish().ok_or("bad governor config")?;
    let gov_refuse = governor_builder(false).finish().ok_or("bad governor config")?;
    serve!(port + 4, Governor::new(&gov_allow));
    serve!(port + 5, Governor::new(&gov_headers));
    serve!(port + 6, Governor::new(&gov_refuse));
    // The floor: three fixed headers written into every response, nothing decided.
    let server = HttpServer::new(|| App::new().wrap_fn(fixed_headers).route("/", web::get().to(hello)))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port + 7))?
        .run();
    actix_web::rt::spawn(server);
    // A middleware that does nothing.
    let server = HttpServer::new(|| App::new().wrap_fn(|req, srv| srv.call(req)).route("/", web::get().to(hello)))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port + 8))?
        .run();
    actix_web::rt::spawn(server);
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

#[actix_web::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("http") => http(args.next().and_then(|p| p.parse().ok()).unwrap_or(4300)).await,
        _ => Err("usage: actix-bench-server http [PORT]".into()),
    }
}
