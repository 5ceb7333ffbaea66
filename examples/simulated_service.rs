//! The demos' simulated service behind `GET /api/work` (one file, shared by the axum, actix-web
//! and warp demos): a pool of workers, each request holding one for a fixed time, so that past
//! the pool's size requests queue and their latency rises sharply — what a real service does past
//! its capacity. The route's adaptive limit (`examples/demo-config.toml`) finds that size from the
//! latency alone and refuses the excess with 503 instead of letting it queue.
//!
//! `TOLLGATE_DEMO_WORKERS` (default 16) workers, `TOLLGATE_DEMO_WORK` (default `20ms`) each.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Semaphore;

const DEFAULT_WORKERS: usize = 16;
const DEFAULT_WORK: Duration = Duration::from_millis(20);

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The worker pool of the process (one, whatever runtime threads or framework workers ask).
#[derive(Debug)]
pub struct Workers {
    pool: Semaphore,
    work: Duration,
    size: usize,
}

impl Workers {
    /// Sizes the process's pool from the environment; a demo calls it at start-up, so that a
    /// value that does not parse stops it with a message naming the variable. Later calls, and
    /// [`Workers::get`] before any, keep the first pool.
    pub fn init() -> Result<&'static Workers, String> {
        let size = match std::env::var("TOLLGATE_DEMO_WORKERS") {
            Ok(text) => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("TOLLGATE_DEMO_WORKERS={text:?}: expected a whole number above 0")),
            },
            Err(_) => DEFAULT_WORKERS,
        };
        let work = match std::env::var("TOLLGATE_DEMO_WORK") {
            Ok(text) => {
                tollgate::quota::parse_duration(&text).map_err(|e| format!("TOLLGATE_DEMO_WORK={text:?}: {e}"))?
            }
            Err(_) => DEFAULT_WORK,
        };
        Ok(WORKERS.get_or_init(|| Workers { pool: Semaphore::new(size), work, size }))
    }

    /// The process's pool: the one [`Workers::init`] made, else the default one.
    pub fn get() -> &'static Workers {
        WORKERS.get_or_init(|| Workers {
            pool: Semaphore::new(DEFAULT_WORKERS),
            work: DEFAULT_WORK,
            size: DEFAULT_WORKERS,
        })
    }

    /// How many workers there are.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Does one request's work: waits for a free worker, then holds it for the work's time.
    pub async fn work(&self) -> &'static str {
        // The pool is never closed, so the permit always comes.
        if let Ok(_worker) = self.pool.acquire().await {
            tokio::time::sleep(self.work).await;
        }
        "done"
    }
}
