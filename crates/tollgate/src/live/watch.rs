//! Hot reload of a configuration file: when it changes, and on `SIGHUP` (feature `reload`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::LiveEngine;
use crate::error::Error;
use crate::store::Store;

/// How a [`LiveEngine`] follows its configuration file: see [`LiveEngine::watch`]. Start it with
/// [`Watch::start`], which returns the [`Watching`] that stops it when dropped.
pub struct Watch<St: Store> {
    live: LiveEngine<St>,
    path: PathBuf,
    file: bool,
    sighup: bool,
    debounce: Duration,
}

impl<St: Store> fmt::Debug for Watch<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("path", &self.path)
            .field("file", &self.file)
            .field("sighup", &self.sighup)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl<St: Store + Clone> LiveEngine<St> {
    /// Reloads the configuration file at `path` ([`LiveEngine::reload_from_path`]) whenever its
    /// content changes (watched through the operating system's file events, with the `notify`
    /// crate) and, on Unix, whenever the process gets `SIGHUP`. A file that cannot be read,
    /// parsed or validated is refused with an error log naming the field, and the running limits
    /// stay; each reload is logged with what changed and counted (see the [module
    /// docs](super)).
    ///
    /// The directory holding the file is watched, so that a file replaced rather than written in
    /// place (as editors and Kubernetes config maps do) is followed too; the events of one save
    /// are taken together ([`Watch::debounce`]), and a save that leaves the content as it was
    /// reloads nothing. `SIGHUP` always reloads.
    ///
    /// ```no_run
    /// use tollgate::live::LiveEngine;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), tollgate::Error> {
    /// let path = std::env::var("TOLLGATE_CONFIG").unwrap_or_else(|_| "tollgate.toml".into());
    /// let live = LiveEngine::from_config(tollgate::Config::from_path(&path)?)?;
    /// // Keep the guard as long as the server runs: dropping it stops the reloads.
    /// let _reloading = live.watch(&path).start()?;
    /// // ... serve with `live` ...
    /// # Ok(()) }
    /// ```
    pub fn watch(&self, path: impl AsRef<Path>) -> Watch<St> {
        Watch {
            live: self.clone(),
            path: path.as_ref().to_path_buf(),
            file: true,
            sighup: cfg!(unix),
            debounce: Duration::from_millis(100),
        }
    }
}

impl<St: Store + Clone> Watch<St> {
    /// Whether changes of the file reload it (default: yes).
    #[must_use]
    pub fn file(mut self, on: bool) -> Self {
        self.file = on;
        self
    }

    /// Whether `SIGHUP` reloads the file (default: yes, on Unix; elsewhere there is no such
    /// signal and this does nothing). Needs a tokio runtime with its signal and I/O drivers (the
    /// default multi-threaded one, `#[tokio::main]`, `#[actix_web::main]`). Once tokio has taken
    /// `SIGHUP`, it keeps it for the process: after the watch stops the signal is ignored rather
    /// than ending the process.
    #[must_use]
    pub fn sighup(mut self, on: bool) -> Self {
        self.sighup = on;
        self
    }

    /// How long the file must be quiet after an event before it is read (default 100 ms): a
    /// save is often several events (truncate, write, rename), and reading it half-written
    /// would refuse a good file.
    #[must_use]
    pub fn debounce(mut self, quiet: Duration) -> Self {
        self.debounce = quiet;
        self
    }

    /// Starts watching. Errors when the file's directory cannot be watched, or `SIGHUP` cannot be
    /// taken (no tokio runtime here); nothing is started then.
    pub fn start(self) -> Result<Watching, Error> {
        let watch_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Watch {
            path: self.path.display().to_string(),
            source,
        };
        let stopped = Arc::new(AtomicBool::new(false));
        #[cfg(unix)]
        let signal = match self.sighup {
            true => Some(self.on_sighup().map_err(watch_error)?),
            false => None,
        };
        let watcher = match self.file {
            true => Some(self.on_change(Arc::clone(&stopped)).map_err(|e| {
                #[cfg(unix)]
                if let Some(task) = &signal {
                    task.abort();
                }
                watch_error(e)
            })?),
            false => None,
        };
        Ok(Watching {
            stopped,
            _watcher: watcher,
            #[cfg(unix)]
            signal,
        })
    }

    /// Watches the file's directory; a thread takes the events of each save together, then
    /// reloads the file if its content changed, until `stopped`.
    fn on_change(
        &self,
        stopped: Arc<AtomicBool>,
    ) -> Result<notify::RecommendedWatcher, Box<dyn std::error::Error + Send + Sync>> {
        let (events, received) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Errors of the watch itself are logged; any event may be the file's, which is
            // compared by content before it is reloaded.
            if let Err(error) = &event {
                tracing::warn!(%error, "tollgate: watching the configuration file failed");
            }
            let _ = events.send(());
        })?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let (live, path, quiet) = (self.live.clone(), self.path.clone(), self.debounce);
        // What is running now came from the file as it is (or from elsewhere): only a change of
        // it reloads.
        if live.last_read().is_none() {
            live.remember_read(std::fs::read(&path).ok());
        }
        std::thread::Builder::new().name("tollgate-reload".into()).spawn(move || {
            // Ends when the watcher is dropped with its sender.
            while received.recv().is_ok() {
                while received.recv_timeout(quiet).is_ok() {}
                // The watcher's own thread may deliver an event after it is dropped.
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                // Read again by the reload, which records what it read: a `SIGHUP` that already
                // reloaded these bytes leaves nothing to do here.
                let now = std::fs::read(&path).ok();
                if now.is_some() && now != live.last_read() {
                    // Refusals are logged and counted where they are decided.
                    let _ = live.reload_path(&path, "file");
                }
            }
        })?;
        Ok(watcher)
    }

    /// Takes `SIGHUP` now (so that one sent as soon as this returns is not the default action,
    /// which ends the process), and reloads the file at each one in a task.
    #[cfg(unix)]
    fn on_sighup(&self) -> Result<tokio::task::JoinHandle<()>, Box<dyn std::error::Error + Send + Sync>> {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Handle::try_current()?;
        let mut hangups = {
            let _entered = runtime.enter();
            signal(SignalKind::hangup())?
        };
        let (live, path) = (self.live.clone(), self.path.clone());
        Ok(runtime.spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!(path = %path.display(), "tollgate: SIGHUP, reloading the configuration");
                // A reload builds an engine: well under a millisecond for any real configuration,
                // so it runs here rather than on a blocking thread.
                let _ = live.reload_path(&path, "signal");
            }
        }))
    }
}

/// A running [`Watch`]: the reloads stop when it is dropped.
#[must_use = "the reloads stop when this is dropped"]
pub struct Watching {
    stopped: Arc<AtomicBool>,
    _watcher: Option<notify::RecommendedWatcher>,
    #[cfg(unix)]
    signal: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for Watching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watching").finish_non_exhaustive()
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        #[cfg(unix)]
        if let Some(task) = &self.signal {
            task.abort();
        }
    }
}
