//! Run with: cargo run -p actix-demo
//!
//! Serves `GET /api/hello`, `POST /api/echo`, `GET /api/work` (a simulated service of
//! `TOLLGATE_DEMO_WORKERS` workers behind an adaptive limit) and `GET /ws` (WebSocket echo) on `TOLLGATE_ADDR`
//! (default `127.0.0.1:3000`) with the limits of the TOML file in `TOLLGATE_CONFIG`, or the
//! built-in ones (printed at start-up) — the file reloaded while it serves, when it changes and
//! on `SIGHUP` (`TOLLGATE_RELOAD=file`, `signal` or `off` to choose; a file that does not
//! validate is refused, logged on stderr, and the running limits stay) — on two workers sharing
//! one limiter, with the slow-client guards of `TOLLGATE_HEADER_TIMEOUT`, `TOLLGATE_REQUEST_TIMEOUT` and `TOLLGATE_MAX_CONNECTIONS`
//! (see `actix_demo::ServerOptions`). With `REDIS_URL` set (e.g. `redis://127.0.0.1:6379/`),
//! the limits live in Redis and every instance pointed at it shares them, open WebSocket
//! connections per client included. `GET /metrics` shows tollgate's decisions, leases and
//! WebSocket verdicts in Prometheus's format; `GET /dashboard` shows them live (with
//! `GET /stats`, their JSON, and `GET /stats/events`, its stream), to loopback clients and to
//! anyone presenting the token in `TOLLGATE_STATS_TOKEN`.

// A console demo: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::config::Config;
use tollgate::live::LiveEngine;

#[actix_web::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("actix-demo: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    actix_demo::log_to_stderr();
    let options = actix_demo::ServerOptions::from_env()?;
    actix_demo::Workers::init()?;
    let reload = actix_demo::Reload::from_env()?;
    let path = std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from);
    let config = match &path {
        Some(path) => {
            println!("limits from {} (reloaded {reload})", path.display());
            Config::from_path(path)?
        }
        None => {
            println!("limits (built-in; set TOLLGATE_CONFIG to a TOML file to change them):\n");
            println!("{}", actix_demo::DEFAULT_CONFIG);
            actix_demo::DEFAULT_CONFIG.parse()?
        }
    };
    let recorder = PrometheusBuilder::new().install_recorder()?;
    tollgate::observe::describe();
    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = std::net::TcpListener::bind(&addr)?;
    let local = listener.local_addr()?;
    // The limiter is built once, here, outside the server's per-worker factory: both workers
    // count against the same limits.
    let reloading;
    let server = match actix_demo::redis_url(&config, std::env::var("REDIS_URL").ok()) {
        Some(url) => {
            let store = actix_demo::build_redis_store(&config, &url).await?;
            println!("state in Redis at {}", store.url());
            let live = LiveEngine::from_config_with_leases(config, store.clone(), store)?;
            // The limits live: the file is reloaded while the server runs (see actix_demo::Reload).
            reloading = reload.start(&live, path.as_deref())?;
            let limit = tollgate_actix::RateLimit::with_engine(live);
            actix_demo::serve_with(listener, limit, Some(recorder), actix_demo::WORKERS, options)?
        }
        None => {
            println!("state in memory (set REDIS_URL to share it between instances)");
            let store = actix_demo::build_store(&config);
            let live = LiveEngine::from_config_with(config, store)?;
            reloading = reload.start(&live, path.as_deref())?;
            let limit = tollgate_actix::RateLimit::with_engine(live);
            actix_demo::serve_with(listener, limit, Some(recorder), actix_demo::WORKERS, options)?
        }
    };
    println!("{options}");
    println!("listening on http://{local} (metrics at /metrics)");
    let who = if actix_demo::stats_access_from_env().has_token() {
        "loopback clients and holders of TOLLGATE_STATS_TOKEN"
    } else {
        "loopback clients only; set TOLLGATE_STATS_TOKEN to let others in"
    };
    println!("live dashboard at http://{local}/dashboard (JSON at /stats; {who})");
    server.await?;
    drop(reloading);
    Ok(())
}
