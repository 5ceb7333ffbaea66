//! The adaptive concurrency limit of `GET /api/work` (`examples/demo-config.toml`), on every demo,
//! over real sockets. The route serves a simulated service of `N` workers
//! (`examples/simulated_service.rs`: each request holds a worker for 20 ms, so past `N` in flight
//! requests queue and latency rises sharply). Closed-loop clients, each from a loopback address of
//! its own, send the next request as soon as one is answered (50 ms after a refusal). The tests
//! check that the limit finds `N` from latency alone — 3 s after the load rises past it, the
//! median cap and nine windows in ten within ±30 % of `N` (a moment the machine stalls shows as
//! latency, and the cap dips for a few windows) — that the admitted requests' tail latency stays
//! bounded while the excess gets 503 with `Retry-After` instead of queuing, and that next to
//! nothing is refused once the load falls.
//!
//! With `TOLLGATE_ADAPTIVE_TRACE=<dir>` the stepped-load test writes what it saw every 100 ms to
//! `<dir>/<demo>-<N>.csv`, which `scripts/adaptive-plot.sh` draws (README's chart).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_conformance::{DEMOS, Demo, Mode, Server, TRUSTED_PROXY};

/// One load test at a time: they measure latency, and two at once on a small machine would
/// measure the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The route's limiter, as `/stats` names it.
const LIMITER: &str = "in_flight:/api/work";

/// What the clients saw since the last look.
#[derive(Default)]
struct Seen {
    ok: Vec<Duration>,
    refused: u64,
    other: Vec<String>,
}

/// One row of the trace: every 100 ms.
#[derive(Clone, Debug)]
struct Row {
    t_ms: u64,
    clients: usize,
    limit: u64,
    in_flight: u64,
    server_latency_ms: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    ok_per_s: f64,
    refused_per_s: f64,
    /// The admitted requests' latencies, in milliseconds.
    latencies: Vec<f64>,
}

/// Runs closed-loop clients against `server` for `duration`, `load(elapsed)` of them sending at
/// each moment, and returns a row every 100 ms.
async fn drive(server: Server, duration: Duration, load: impl Fn(Duration) -> usize) -> Vec<Row> {
    let most = (0..duration.as_millis() as u64 / 50).map(|i| load(Duration::from_millis(i * 50))).max().unwrap_or(0);
    assert!(most < 200, "one loopback address per client");
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for i in 0..most {
        let (active, stop, seen) = (Arc::clone(&active), Arc::clone(&stop), Arc::clone(&seen));
        // Hosts 1..=200, never the trusted proxy's.
        let host = u8::try_from(i + 1).unwrap();
        assert_ne!(host, TRUSTED_PROXY);
        tasks.push(tokio::spawn(async move {
            let mut http = server.client(host).http().await;
            while !stop.load(Ordering::Acquire) {
                if i >= active.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let sent = Instant::now();
                let reply = http.get("/api/work", &[]).await;
                let took = sent.elapsed();
                let refused = {
                    let mut seen = seen.lock().unwrap();
                    match reply.status.as_u16() {
                        200 => seen.ok.push(took),
                        503 if reply.header("retry-after").is_some() => seen.refused += 1,
                        _ => seen.other.push(format!("{reply:?}")),
                    }
                    reply.status == 503
                };
                if refused {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let mut watcher = server.client(230).http().await;
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < duration {
        tick.tick().await;
        let clients = load(started.elapsed());
        active.store(clients, Ordering::Release);
        let stats = watcher.get("/stats", &[]).await.json();
        let lease = limiter(&stats);
        let mut seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            seen.other.is_empty(),
            "GET /api/work answered other than 200 or 503 with Retry-After: {:?}",
            seen.other
        );
        seen.ok.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| seen.ok.get(((seen.ok.len() as f64 - 1.0) * q).round() as usize).map(|d| ms(*d));
        rows.push(Row {
            t_ms: started.elapsed().as_millis() as u64,
            clients,
            limit: lease["adaptive"]["limit"].as_u64().unwrap(),
            in_flight: lease["in_use"].as_u64().unwrap(),
            server_latency_ms: lease["adaptive"]["latency_ms"].as_f64(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            ok_per_s: seen.ok.len() as f64 * 10.0,
            refused_per_s: seen.refused as f64 * 10.0,
            latencies: seen.ok.iter().map(|d| ms(*d)).collect(),
        });
    }
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await.unwrap();
    }
    rows
}

/// The `/stats` entry of the route's limiter.
fn limiter(stats: &Value) -> &Value {
    let leases = stats["leases"].as_array().unwrap();
    leases.iter().find(|l| l["name"] == LIMITER).unwrap_or_else(|| panic!("no {LIMITER} in {stats}"))
}

async fn start(demo: &'static str, workers: usize) -> Demo {
    Demo::start_with(demo, Mode::BuiltIn, &[("TOLLGATE_DEMO_WORKERS", &workers.to_string())]).await
}

/// The median cap of `rows` and nine in ten of them within `±30 %` of `n`, leaving out the
/// windows that measure the minimum latency (the cap is then the route's `min`, 4).
fn settled(rows: &[Row], n: usize) -> Result<(), String> {
    let (low, high) = (n as f64 * 0.7, n as f64 * 1.3);
    let mut caps: Vec<u64> = rows.iter().map(|r| r.limit).filter(|&l| l > 4).collect();
    let inside = caps.iter().filter(|&&l| (low..=high).contains(&(l as f64))).count();
    let shown = format!("{caps:?}");
    caps.sort_unstable();
    let median = caps.get(caps.len() / 2).copied().unwrap_or(0) as f64;
    if caps.len() >= 20 && (low..=high).contains(&median) && inside * 10 >= caps.len() * 9 {
        Ok(())
    } else {
        Err(format!("median {median}, {inside} of {} caps within {low:.0}..={high:.0}: {shown}", caps.len()))
    }
}

/// The `q` quantile (0.99: p99) of the admitted requests' latency over `rows`, in milliseconds.
fn quantile(rows: &[Row], q: f64) -> f64 {
    let mut all: Vec<f64> = rows.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    all.sort_unstable_by(f64::total_cmp);
    all.get(((all.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// The tail latency bound: an admitted request waits at most for one worker to finish another
/// request (the cap settles near N, under 2N), 40 ms, plus the server's and the machine's own
/// time. Without the limit every request of 3N clients would wait for two others: 60 ms, p50
/// included.
const P99_BOUND_MS: f64 = 50.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_finds_the_workers_of_its_service() {
    let _serial = SERIAL.lock().await;
    let n = 20;
    for demo in DEMOS {
        let process = start(demo, n).await;
        let rows = drive(process.server(), Duration::from_secs(6), |_| 3 * n).await;
        let after = |ms: u64| rows.iter().filter(|r| r.t_ms >= ms).cloned().collect::<Vec<_>>();
        settled(&after(3_000), n).unwrap_or_else(|e| panic!("{demo}, N = {n}: {e}"));
        let (p50, p99) = (quantile(&after(3_000), 0.5), quantile(&after(3_000), 0.99));
        assert!(p99 <= P99_BOUND_MS, "{demo}: p99 {p99:.1} ms");
        let refused: f64 = rows.iter().map(|r| r.refused_per_s).sum();
        assert!(refused > 0.0, "{demo}: 3N clients and nothing refused");
        println!(
            "{demo}: N = {n}, caps after 3 s {:?}, p50 {p50:.1} ms, p99 {p99:.1} ms",
            after(3_000).iter().map(|r| r.limit).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_steps_up_and_down() {
    let _serial = SERIAL.lock().await;
    let trace = std::env::var_os("TOLLGATE_ADAPTIVE_TRACE").map(std::path::PathBuf::from);
    let demo = "axum-demo";
    for n in [10, 20, 40] {
        let process = start(demo, n).await;
        // Half of N for 3 s, three times N for 6 s, half of N again for 3 s.
        let load = move |t: Duration| if (3..9).contains(&t.as_secs()) { 3 * n } else { n / 2 };
        let rows = drive(process.server(), Duration::from_secs(12), load).await;
        if let Some(dir) = &trace {
            write_trace(dir, demo, n, &rows);
        }
        let during =
            |from: u64, to: u64| rows.iter().filter(|r| (from..to).contains(&r.t_ms)).cloned().collect::<Vec<_>>();
        // Under light load the cap grows only while in use: past twice what is held by one
        // window's growth at most (× the tolerance 1.1, plus one), from the route's initial 20.
        for r in during(1_000, 3_000) {
            let most = ((2 * r.clients) as f64 * 1.1 + 1.0).max(20.0) as u64;
            assert!(r.limit <= most, "N = {n}: an unused cap grew to {} at {} ms", r.limit, r.t_ms);
        }
        let high = during(6_000, 9_000);
        settled(&high, n).unwrap_or_else(|e| panic!("N = {n}, 3 s after the load rose to 3N: {e}"));
        let (p50, p99) = (quantile(&high, 0.5), quantile(&high, 0.99));
        assert!(p99 <= P99_BOUND_MS, "N = {n}: p99 {p99:.1} ms");
        assert!(high.iter().map(|r| r.refused_per_s).sum::<f64>() > 0.0, "N = {n}: the excess was refused");
        // Once the load falls back under the cap, next to nothing is refused (a window in which
        // the machine stalled can halve the cap for a moment).
        let low = during(10_000, 12_000);
        let (refused, admitted): (f64, f64) =
            low.iter().fold((0.0, 0.0), |(r, a), row| (r + row.refused_per_s, a + row.ok_per_s));
        assert!(
            refused <= admitted / 100.0,
            "N = {n}: {refused} refused against {admitted} admitted after the load fell"
        );
        println!(
            "N = {n}: caps 6-9 s {:?}, p50 {p50:.1} ms, p99 {p99:.1} ms",
            high.iter().map(|r| r.limit).collect::<Vec<_>>()
        );
    }
}

fn write_trace(dir: &std::path::Path, demo: &str, n: usize, rows: &[Row]) {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
    let mut csv =
        String::from("t_ms,clients,workers,limit,in_flight,server_latency_ms,p50_ms,p99_ms,ok_per_s,refused_per_s\n");
    for r in rows {
        writeln!(
            csv,
            "{},{},{n},{},{},{},{},{},{:.1},{:.1}",
            r.t_ms,
            r.clients,
            r.limit,
            r.in_flight,
            opt(r.server_latency_ms),
            opt(r.p50_ms),
            opt(r.p99_ms),
            r.ok_per_s,
            r.refused_per_s
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{demo}-{n}.csv"));
    std::fs::write(&path, csv).unwrap();
    println!("trace: {}", path.display());
}
