//! The demo servers' live limits (one file, shared by the axum, actix-web and warp demos as they
//! share `demo-config.toml`): the limits of `TOLLGATE_CONFIG` are reloaded while the server runs
//! — when the file changes and on `SIGHUP` — through tollgate's `LiveEngine`, the same for every
//! framework. A file that does not validate is refused with a logged error and the running limits
//! stay; each reload is logged with what changed, and counted (`tollgate_reloads_total` at
//! `/metrics`). The logs (tollgate's `tracing` events, `INFO` and up) go to stderr.

use std::fmt;
use std::path::Path;

use tollgate::live::{LiveEngine, Watching};
use tollgate::{Error, Store};

/// What reloads the configuration file: `TOLLGATE_RELOAD`, a comma-separated list of `file`
/// (the file changes) and `signal` (`SIGHUP`), or `off`. Default: both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reload {
    /// A change of the file reloads it.
    pub file: bool,
    /// `SIGHUP` reloads it.
    pub signal: bool,
}

impl Reload {
    /// From `TOLLGATE_RELOAD`; an unknown word is an error naming it.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("TOLLGATE_RELOAD") {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(Reload { file: true, signal: true }),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut reload = Reload { file: false, signal: false };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "file" => reload.file = true,
                "signal" => reload.signal = true,
                "off" => {}
                other => return Err(format!("TOLLGATE_RELOAD: unknown `{other}` (expected file, signal or off)")),
            }
        }
        Ok(reload)
    }

    /// Starts reloading `live`'s configuration from `path` (the file it was read from, if any) as
    /// this says; `None` when nothing reloads it (no file: the built-in limits). Keep the result
    /// as long as the server runs.
    pub fn start<S: Store + Clone>(self, live: &LiveEngine<S>, path: Option<&Path>) -> Result<Option<Watching>, Error> {
        match path {
            Some(path) if self.file || self.signal => {
                live.watch(path).file(self.file).sighup(self.signal).start().map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file, self.signal) {
            (true, true) => f.write_str("when it changes and on SIGHUP"),
            (true, false) => f.write_str("when it changes"),
            (false, true) => f.write_str("on SIGHUP"),
            (false, false) => f.write_str("never (TOLLGATE_RELOAD=off)"),
        }
    }
}

/// Writes tollgate's log events (reloads, refused configurations, store failures) to stderr.
pub fn log_to_stderr() {
    // Another subscriber already set (a test harness): keep it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::Reload;

    #[test]
    fn reload_reads_its_words() {
        assert_eq!(Reload::parse("signal"), Ok(Reload { file: false, signal: true }));
        assert_eq!(Reload::parse("file, signal"), Ok(Reload { file: true, signal: true }));
        assert_eq!(Reload::parse("off"), Ok(Reload { file: false, signal: false }));
        assert!(Reload::parse("sighup").unwrap_err().contains("sighup"));
    }
}
