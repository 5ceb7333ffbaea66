//! Decisions per second of [`RedisStore`] at 50 concurrent tokio tasks against a local
//! `redis-server` (started here on a free port, or `REDIS_URL`).
//!
//! Run with: `cargo bench -p tollgate-redis --bench redis_store`, then
//! `crates/tollgate-redis/benches/redis_ceiling.sh` for the ceiling: `redis-benchmark` running the
//! same script with the same arguments by `EVALSHA`. Both print decisions (requests) per second.
//! Environment: `BENCH_SECS` (default 5), `BENCH_TASKS` (default 50).

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::{Algorithm, Check, Key, LimitSpec, Quota, Snapshot, Store};
use tollgate_redis::RedisStore;

/// Keys spread over this many clients, as `redis_ceiling.sh` does with `-r`.
const KEYS: u64 = 100_000;

async fn run(store: &RedisStore, label: &str, tasks: usize, secs: u64, limits: usize) -> f64 {
    let quota: Quota = "1000000/s".parse().unwrap();
    let handles: Arc<Vec<_>> = Arc::new(
        (0..limits)
            .map(|i| {
                let spec = LimitSpec { name: format!("l{i}"), policy: "bench".into(), algorithm: Algorithm::Gcra };
                store.register(&spec).unwrap()
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (store, handles, stop, done, errors) =
            (store.clone(), Arc::clone(&handles), Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
        joins.push(tokio::spawn(async move {
            let mut n = t as u64 * 7919;
            let mut out = vec![Snapshot::EMPTY; handles.len()];
            while !stop.load(Ordering::Relaxed) {
                n = (n + 104_729) % KEYS;
                let checks: Vec<Check<'_, _>> = handles
                    .iter()
                    .map(|limit| Check { limit, key: Key::Int(n), quota, cost: 1, max_wait: Duration::ZERO })
                    .collect();
                match store.check(&checks, &mut out).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for j in joins {
        j.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    println!(
        "{label}: {:.0} decisions/s ({n} in {elapsed:.1}s, {tasks} tasks, {} errors)",
        rate,
        errors.load(Ordering::Relaxed)
    );
    rate
}

/// Runs `redis_ceiling.sh` against `port` and returns its (un-pipelined, pipelined) requests/s.
fn ceiling(port: u16, tasks: usize) -> Option<(f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/redis_ceiling.sh");
    let out =
        std::process::Command::new(script).arg(port.to_string()).env("CLIENTS", tasks.to_string()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let rates: Vec<f64> =
        text.lines().filter_map(|l| l.split(": ").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    match rates.as_slice() {
        [p1, pn] => Some((*p1, *pn)),
        _ => {
            eprintln!("redis_ceiling.sh gave no figures: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let secs = if benching { secs } else { 1 };
    let tasks: usize = std::env::var("BENCH_TASKS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let server;
    let (url, port) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            if !support::redis_available() {
                return;
            }
            server = support::RedisServer::start();
            (server.url(), Some(server.port))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = RedisStore::builder(&url).prefix("bench").build().await.unwrap();
        println!("redis store at {url}");
        let one = run(&store, "1 limit (GCRA) per decision", tasks, secs, 1).await;
        run(&store, "2 limits (GCRA) per decision", tasks, secs, 2).await;
        // The ceiling, on the same server in the same run (not with `cargo test --benches`).
        if let (true, Some(port)) = (benching, port)
            && let Some((p1, pn)) = ceiling(port, tasks)
        {
            println!("store / redis-benchmark -P 1: {:.2}x; store / pipelined: {:.2}x", one / p1, one / pn);
        }
    });
}
