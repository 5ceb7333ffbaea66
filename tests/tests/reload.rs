//! Live limits in every demo, over real sockets: each demo started with `TOLLGATE_CONFIG` naming
//! a file of the test's own, the file rewritten while it serves, and the new limits observed —
//! after `SIGHUP` (with the file watch off, so the signal alone reloads it), and after the write
//! alone (the default watch). A file that does not validate is refused, logged, and the running
//! limits stay. The limit is a fixed window, so that what a client spent before the reload is
//! seen counting against the new quota.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate_conformance::{Client, DEMOS, Demo};

/// `GET /api/hello` limited to `quota` per client IP, in a fixed window.
fn config(quota: &str) -> String {
    format!(
        "[policies.hello]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\", key = \"ip\", algorithm = \"fixed_window\" }}]\n\n\
         [[routes]]\npath = \"/api/hello\"\npolicy = \"hello\"\n"
    )
}

/// A file of the scenario's own, removed at the end.
struct File(PathBuf);

impl File {
    fn new(demo: &str, scenario: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-reload-{}-{demo}-{scenario}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = File(dir.join("tollgate.toml"));
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `GET /api/hello` from `client`: its status and `X-RateLimit-Limit`.
async fn hello(client: &Client) -> (StatusCode, u64) {
    let reply = client.get("/api/hello").await;
    (reply.status, reply.number("x-ratelimit-limit"))
}

/// Asks until `client` is admitted under a limit of `limit` (a refusal spends nothing), within
/// 20 s.
async fn until_admitted(client: &Client, limit: u64) {
    let started = Instant::now();
    loop {
        if hello(client).await == (StatusCode::OK, limit) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not reloaded to a limit of {limit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 20 s for `demo`'s logs to say `what`.
async fn until_logged(demo: &Demo, what: &str) {
    let started = Instant::now();
    while !demo.stderr().contains(what) {
        assert!(started.elapsed() < Duration::from_secs(20), "not logged `{what}`; stderr:\n{}", demo.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `scenario` against every demo at once; panics naming the demos that failed.
fn every_demo<F, Fut>(scenario: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let failures: Vec<String> = runtime.block_on(async {
        let runs: Vec<_> = DEMOS.iter().map(|&demo| (demo, tokio::spawn(scenario(demo)))).collect();
        let mut failures = Vec::new();
        for (demo, run) in runs {
            if let Err(err) = run.await {
                failures.push(format!("{demo}: {err}"));
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sighup_reloads_the_configuration_and_a_broken_file_changes_nothing() {
    every_demo(|demo| async move {
        let file = File::new(demo, "sighup", &config("2/h"));
        // The signal alone reloads: the file watch is off.
        let process = Demo::start_with_config(demo, &file.0, &[("TOLLGATE_RELOAD", "signal")]).await;
        let client = process.server().client(61);
        assert_eq!(hello(&client).await, (StatusCode::OK, 2));
        assert_eq!(hello(&client).await, (StatusCode::OK, 2));
        assert_eq!(hello(&client).await, (StatusCode::TOO_MANY_REQUESTS, 2));

        file.write(&config("5/h"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hello(&client).await, (StatusCode::TOO_MANY_REQUESTS, 2), "reloaded without a signal");
        process.hang_up();
        until_admitted(&client, 5).await;
        // 2 spent before the reload count against the 5: the third was the one above.
        assert_eq!(hello(&client).await, (StatusCode::OK, 5));
        assert_eq!(hello(&client).await, (StatusCode::OK, 5));
        assert_eq!(hello(&client).await, (StatusCode::TOO_MANY_REQUESTS, 5));
        until_logged(&process, "hello/per_ip: 2/1h -> 5/1h").await;
        assert!(process.stderr().contains("tollgate reloaded its limits"), "{}", process.stderr());

        // A file that does not validate: refused, logged, and the limits stay as they were.
        file.write(&config("5/fortnight"));
        process.hang_up();
        until_logged(&process, "tollgate refused the new configuration").await;
        assert!(process.stderr().contains("fortnight"), "{}", process.stderr());
        let other = process.server().client(62);
        assert_eq!(hello(&other).await, (StatusCode::OK, 5));
        assert_eq!(hello(&client).await, (StatusCode::TOO_MANY_REQUESTS, 5));
    });
}

#[test]
fn a_rewritten_configuration_file_is_reloaded_by_itself() {
    every_demo(|demo| async move {
        let file = File::new(demo, "watch", &config("3/h"));
        let process = Demo::start_with_config(demo, &file.0, &[]).await;
        let client = process.server().client(63);
        assert_eq!(hello(&client).await, (StatusCode::OK, 3));
        file.write(&config("4/h"));
        until_admitted(&process.server().client(64), 4).await;
        // One spent of the 4.
        for _ in 0..3 {
            assert_eq!(hello(&client).await, (StatusCode::OK, 4));
        }
        assert_eq!(hello(&client).await, (StatusCode::TOO_MANY_REQUESTS, 4));
        until_logged(&process, "hello/per_ip: 3/1h -> 4/1h").await;
    });
}
