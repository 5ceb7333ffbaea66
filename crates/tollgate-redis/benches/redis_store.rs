//! Decisions per second of [`RedisStore`] against `redis-server` processes started here, and
//! where the time goes: Redis's CPU or the clients'.
//!
//! 1. One process, `BENCH_TASKS` concurrent tokio tasks on one store (one multiplexed
//!    connection), 1 and 2 GCRA limits per decision; then `redis_ceiling.sh` on the same server:
//!    `redis-benchmark` running the same scripts by `EVALSHA`, and the store's ratio to it.
//! 2. Scaling: 1, 2 and 4 client processes (this binary run again as a child, each an
//!    instance with its own store and `BENCH_TASKS` tasks), 1 and 2 limits per decision (both
//!    keyed by the same client, so one slot: one round trip in a cluster too), against one Redis
//!    and against a three-master Redis Cluster. Every child runs the same `BENCH_SECS` window;
//!    the parent reads the CPU time of each Redis node's main thread over that window (from
//!    /proc) and the children report theirs, so each row says how many cores Redis and the
//!    clients used. `redis-benchmark` runs the same scripts beside (on the cluster: one run per
//!    master at once, each with a hash tag that master serves).
//!
//! Run with: `cargo bench -p tollgate-redis --bench redis_store`. Environment: `BENCH_SECS`
//! (default 3), `BENCH_TASKS` (50), `BENCH_PROCS` (`1 2 4`), `REDIS_URL` (a server of your own:
//! part 1 only). Figures are ratios within one run; nothing is asserted.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{RedisCluster, RedisServer, raw_command};
use tollgate::{Algorithm, Check, Key, LimitSpec, Quota, Snapshot, Store};
use tollgate_redis::RedisStore;

/// Keys spread over this many clients, as `redis_ceiling.sh` does with `-r`.
const KEYS: u64 = 100_000;

/// Set in a child's environment: `<cluster 0/1>|<urls, comma-separated>|<limits>|<tasks>|<start
/// ms since the epoch>|<seconds>`.
const CHILD: &str = "TOLLGATE_BENCH_CHILD";

/// What one run did.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    decisions: u64,
    errors: u64,
    /// This process's CPU time over the run, in seconds.
    cpu: f64,
}

/// This process's user + system CPU time in seconds (Linux; 0 elsewhere).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    // `rest` starts at field 3 (the state): utime and stime are fields 14 and 15, in ticks.
    let tick = |i: usize| rest.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

/// A Redis server's main-thread CPU time in seconds (its pid from `INFO server`; 0 when its
/// /proc is not readable).
fn server_cpu(port: u16) -> f64 {
    let info = raw_command(port, &["INFO", "server"]).unwrap_or_default();
    let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim).unwrap_or("0");
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

async fn connect(cluster: bool, urls: &[String]) -> RedisStore {
    let builder =
        if cluster { RedisStore::cluster(urls.iter().cloned()) } else { RedisStore::builder(urls[0].clone()) };
    builder.prefix("bench").build().await.unwrap()
}

/// `tasks` tasks deciding with `limits` GCRA limits (one client key per decision) until `stop`.
async fn load(store: &RedisStore, tasks: usize, limits: usize, until: Instant) -> Counts {
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
    let seed = u64::from(std::process::id());
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (store, handles, stop, done, errors) =
            (store.clone(), Arc::clone(&handles), Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
        joins.push(tokio::spawn(async move {
            let mut n = (seed * 31 + t as u64) * 7919;
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
    let cpu = own_cpu();
    tokio::time::sleep_until(until.into()).await;
    stop.store(true, Ordering::Relaxed);
    let counts = Counts {
        decisions: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        cpu: own_cpu() - cpu,
    };
    for j in joins {
        j.await.unwrap();
    }
    counts
}

/// A child: waits for the common start, runs, prints `decisions errors cpu_seconds`.
fn child(spec: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let (cluster, urls, limits, tasks, start_ms, secs) = (
        f[0] == "1",
        f[1].split(',').map(String::from).collect::<Vec<_>>(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        f[4].parse::<u64>().unwrap(),
        f[5].parse::<u64>().unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let counts = rt.block_on(async {
        let store = connect(cluster, &urls).await;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let start = Instant::now() + Duration::from_millis(start_ms.saturating_sub(now_ms));
        tokio::time::sleep_until(start.into()).await;
        load(&store, tasks, limits, start + Duration::from_secs(secs)).await
    });
    println!("{} {} {:.3}", counts.decisions, counts.errors, counts.cpu);
}

/// Part 1: one process, one store.
async fn one_process(store: &RedisStore, label: &str, tasks: usize, secs: u64, limits: usize) -> f64 {
    let started = Instant::now();
    let c = load(store, tasks, limits, started + Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = c.decisions as f64 / elapsed;
    println!("{label}: {rate:.0} decisions/s ({} in {elapsed:.1}s, {tasks} tasks, {} errors)", c.decisions, c.errors);
    rate
}

/// Runs `redis_ceiling.sh` on `port` for `cases` (with `env`), returning each case's requests/s.
fn ceiling(port: u16, cases: &str, env: &[(&str, String)]) -> Vec<(String, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/redis_ceiling.sh");
    let mut cmd = Command::new(script);
    cmd.arg(port.to_string()).env("CASES", cases);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Ok(out) = cmd.output() else { return Vec::new() };
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<(String, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect();
    if rates.is_empty() {
        eprintln!("redis_ceiling.sh gave no figures: {}", String::from_utf8_lossy(&out.stderr));
    }
    rates
}

/// One scaling row: `procs` children against `urls` for `secs`, Redis CPU read on `ports`.
fn scaling_row(cluster: bool, urls: &[String], ports: &[u16], procs: usize, limits: usize, tasks: usize, secs: u64) {
    let exe = std::env::current_exe().unwrap();
    // Time to start and connect, then every child runs the same window.
    let start_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 1_500;
    let spec = format!("{}|{}|{limits}|{tasks}|{start_ms}|{secs}", u8::from(cluster), urls.join(","));
    let children: Vec<Child> =
        (0..procs).map(|_| Command::new(&exe).env(CHILD, &spec).stdout(Stdio::piped()).spawn().unwrap()).collect();
    let until_start = Duration::from_millis(
        start_ms.saturating_sub(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64),
    );
    std::thread::sleep(until_start);
    let before: Vec<f64> = ports.iter().map(|&p| server_cpu(p)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<f64> = ports.iter().map(|&p| server_cpu(p)).collect();
    let mut total = Counts::default();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        total.decisions += f.first().and_then(|x| x.parse().ok()).unwrap_or(0);
        total.errors += f.get(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        total.cpu += f.get(2).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    }
    let secs = secs as f64;
    let redis: Vec<f64> = before.iter().zip(&after).map(|(b, a)| (a - b) / secs).collect();
    let busiest = redis.iter().copied().fold(0.0, f64::max);
    let rate = total.decisions as f64 / secs;
    println!(
        "| {} | {limits} | {procs} | {rate:.0} | {:.0} | {:.2} (busiest node {busiest:.2}) | {:.2} | {:.1} | {} |",
        if cluster { "3-master cluster" } else { "one Redis" },
        rate / procs as f64,
        redis.iter().sum::<f64>(),
        total.cpu / secs,
        redis.iter().sum::<f64>() / rate * 1e6,
        total.errors,
    );
}

/// A hash tag whose slot `port` serves, for `redis-benchmark` against that master.
fn tag_on(cluster: &RedisCluster, port: u16) -> String {
    let topology = cluster.topology();
    let node = topology.iter().find(|n| n.port == port).unwrap();
    (0..10_000).map(|i| format!("t{i}")).find(|t| node.serves(cluster.key_slot(&format!("{{{t}}}")))).unwrap()
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let env_or = |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let secs = if benching { env_or("BENCH_SECS", 3) } else { 1 };
    let tasks = env_or("BENCH_TASKS", 50) as usize;
    let procs: Vec<usize> = std::env::var("BENCH_PROCS")
        .unwrap_or_else(|_| "1 2 4".into())
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let server;
    let (url, port) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            if !support::redis_available() {
                return;
            }
            server = RedisServer::start();
            (server.url(), Some(server.port))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = connect(false, std::slice::from_ref(&url)).await;
        println!("redis store at {url}");
        let one = one_process(&store, "1 limit (GCRA) per decision", tasks, secs, 1).await;
        let two = one_process(&store, "2 limits (GCRA) per decision", tasks, secs, 2).await;
        // The ceiling, on the same server in the same run (not with `cargo test --benches`).
        if let (true, Some(port)) = (benching, port) {
            for pipeline in ["1", "16"] {
                let env = [("PIPELINE", pipeline.to_owned()), ("CLIENTS", tasks.to_string())];
                let rates = ceiling(port, "gcra gcra-batch-2", &env);
                for (case, rate) in &rates {
                    println!("redis-benchmark -P {pipeline} {case}: {rate:.0} requests/s");
                }
                if let [(_, p1), (_, p2)] = rates.as_slice() {
                    println!(
                        "store / redis-benchmark -P {pipeline}: 1 limit {:.2}x, 2 limits {:.2}x",
                        one / p1,
                        two / p2
                    );
                }
            }
        }
    });
    drop(rt);
    if !benching || port.is_none() {
        return;
    }

    println!("\nscaling: {tasks} tasks per process, {secs}s per row, Redis's and the clients' CPU in cores");
    println!(
        "| Redis | limits | processes | decisions/s | per process | Redis CPU | clients' CPU | Redis µs/decision | errors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let single = port.into_iter().collect::<Vec<_>>();
    for limits in [1, 2] {
        for &p in &procs {
            scaling_row(false, std::slice::from_ref(&url), &single, p, limits, tasks, secs);
        }
    }
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    for limits in [1, 2] {
        for &p in &procs {
            scaling_row(true, &cluster.urls(), &ports, p, limits, tasks, secs);
        }
    }
    // redis-benchmark beside: one run per master at once, each on a tag that master serves.
    for case in ["gcra", "gcra-batch-2"] {
        let runs: Vec<_> = ports
            .iter()
            .map(|&p| {
                let env = vec![("TAG", tag_on(&cluster, p)), ("ROUNDS", "1".to_owned())];
                std::thread::spawn(move || ceiling(p, case, &env))
            })
            .collect();
        let total: f64 = runs.into_iter().filter_map(|r| r.join().ok()).flatten().map(|(_, r)| r).sum();
        println!("redis-benchmark on the 3 masters at once, {case}: {total:.0} requests/s");
    }
}
