//! Run with: cargo run -p warp-demo
//!
//! Serves `GET /api/hello`, `POST /api/echo`, `GET /api/work` (a simulated service of
//! `TOLLGATE_DEMO_WORKERS` workers behind an adaptive limit) and `GET /ws` (WebSocket echo) on `TOLLGATE_ADDR`
//! (default `127.0.0.1:3000`) with the limits of the TOML file in `TOLLGATE_CONFIG`, or the
//! built-in ones (printed at start-up) — the file reloaded while it serves, when it changes and
//! on `SIGHUP` (`TOLLGATE_RELOAD=file`, `signal` or `off` to choose; a file that does not
//! validate is refused, logged on stderr, and the running limits stay) — and the slow-client
//! guards of `TOLLGATE_HEADER_TIMEOUT`, `TOLLGATE_REQUEST_TIMEOUT` and `TOLLGATE_MAX_CONNECTIONS`
//! (see `warp_demo::ServerOptions`).
//! With `REDIS_URL` set (e.g. `redis://127.0.0.1:6379/`), the limits live in Redis and every
//! instance pointed at it shares them, open WebSocket connections per client included.
//! `GET /metrics` shows tollgate's decisions, leases and WebSocket verdicts in Prometheus's
//! format; `GET /dashboard` shows them live (with `GET /stats`, their JSON, and
//! `GET /stats/events`, its stream), to loopback clients and to anyone presenting the token in
//! `TOLLGATE_STATS_TOKEN`.

// A console demo: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::config::Config;
use tollgate::live::LiveEngine;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("warp-demo: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    warp_demo::log_to_stderr();
    let options = warp_demo::ServerOptions::from_env()?;
    warp_demo::Workers::init()?;
    let reload = warp_demo::Reload::from_env()?;
    let path = std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from);
    let config = match &path {
        Some(path) => {
            println!("limits from {} (reloaded {reload})", path.display());
            Config::from_path(path)?
        }
        None => {
            println!("limits (built-in; set TOLLGATE_CONFIG to a TOML file to change them):\n");
            println!("{}", warp_demo::DEFAULT_CONFIG);
            warp_demo::DEFAULT_CONFIG.parse()?
        }
    };
    let recorder = PrometheusBuilder::new().install_recorder()?;
    tollgate::observe::describe();
    let routes = warp_demo::with_metrics(warp_demo::routes(), recorder);
    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    match warp_demo::redis_url(&config, std::env::var("REDIS_URL").ok()) {
        Some(url) => {
            let store = warp_demo::build_redis_store(&config, &url).await?;
            println!("state in Redis at {}", store.url());
            let live = LiveEngine::from_config_with_leases(config, store.clone(), store)?;
            // The limits live: the file is reloaded while the server runs (see warp_demo::Reload).
            let _reloading = reload.start(&live, path.as_deref())?;
            let limits = tollgate_warp::RateLimit::with_engine(live);
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("{options}");
            println!("listening on http://{} (metrics at /metrics)", listener.local_addr()?);
            print_dashboard(listener.local_addr()?);
            warp_demo::serve_with(listener, &limits, routes, options).await?;
        }
        None => {
            println!("state in memory (set REDIS_URL to share it between instances)");
            let store = warp_demo::build_store(&config);
            let live = LiveEngine::from_config_with(config, store)?;
            let _reloading = reload.start(&live, path.as_deref())?;
            let limits = tollgate_warp::RateLimit::with_engine(live);
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("{options}");
            println!("listening on http://{} (metrics at /metrics)", listener.local_addr()?);
            print_dashboard(listener.local_addr()?);
            warp_demo::serve_with(listener, &limits, routes, options).await?;
        }
    }
    Ok(())
}

/// Where the live dashboard is, and who may see it.
fn print_dashboard(addr: std::net::SocketAddr) {
    let who = if warp_demo::stats_access_from_env().has_token() {
        "loopback clients and holders of TOLLGATE_STATS_TOKEN"
    } else {
        "loopback clients only; set TOLLGATE_STATS_TOKEN to let others in"
    };
    println!("live dashboard at http://{addr}/dashboard (JSON at /stats; {who})");
}
