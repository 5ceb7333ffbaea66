//! Hot reload of a configuration file (feature `reload`): on change and on `SIGHUP`. The watcher
//! is the operating system's, so these tests wait (bounded) for it; the limits themselves are
//! tested with manual clocks in `live.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tollgate::live::LiveEngine;
use tollgate::{Config, Quota};

fn config(quota: &str) -> String {
    format!(
        "[policies.api]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\" }}]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"\n"
    )
}

/// A directory of the test's own, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn file(&self) -> PathBuf {
        self.0.join("tollgate.toml")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quota(live: &LiveEngine) -> Quota {
    live.config().policies["api"].limits[0].quota
}

/// Waits up to 10 s for `live` to run `want`.
fn wait_for(live: &LiveEngine, want: &str) {
    let want: Quota = want.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while quota(live) != want {
        assert!(Instant::now() < deadline, "not reloaded: {} instead of {want}", quota(live));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(path: &Path) -> LiveEngine {
    LiveEngine::from_config(Config::from_path(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_and_a_broken_one_refused() {
    let dir = Dir::new("watch");
    std::fs::write(dir.file(), config("10/min")).unwrap();
    let live = start(&dir.file());
    let watching = live.watch(dir.file()).sighup(false).debounce(Duration::from_millis(50)).start().unwrap();

    std::fs::write(dir.file(), config("5/min")).unwrap();
    wait_for(&live, "5/min");

    // A broken file is refused and the limits stay; the next good one applies.
    let engine = live.engine();
    std::fs::write(dir.file(), config("5/fortnight")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::sync::Arc::ptr_eq(&engine, &live.engine()), "a broken file changed the engine");
    assert_eq!(quota(&live), "5/min".parse().unwrap());

    // Replaced rather than written in place, as editors save: followed too.
    let other = dir.0.join("tollgate.toml.new");
    std::fs::write(&other, config("7/min")).unwrap();
    std::fs::rename(&other, dir.file()).unwrap();
    wait_for(&live, "7/min");

    drop(watching);
    std::fs::write(dir.file(), config("9/min")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(quota(&live), "7/min".parse().unwrap(), "no reload once the watch is dropped");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let dir = Dir::new("sighup");
    std::fs::write(dir.file(), config("10/min")).unwrap();
    let live = start(&dir.file());
    let _watching = live.watch(dir.file()).file(false).start().unwrap();
    std::fs::write(dir.file(), config("3/min")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(quota(&live), "10/min".parse().unwrap(), "the file alone is not watched");
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&live, "3/min");
}

#[test]
fn sighup_needs_a_runtime() {
    let dir = Dir::new("no-runtime");
    std::fs::write(dir.file(), config("10/min")).unwrap();
    let live = start(&dir.file());
    if cfg!(unix) {
        let error = live.watch(dir.file()).start().unwrap_err().to_string();
        assert!(error.contains("tollgate.toml"), "{error}");
    }
    // The file alone needs none.
    let _watching = live.watch(dir.file()).sighup(false).start().unwrap();
}
