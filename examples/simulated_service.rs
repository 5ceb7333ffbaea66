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

/// The worker pool of the process (one, whatever runtime threads or framework workers ask).
#[derive(Debug)]
pub struct Workers {
    pool: Semaphore,
    work: Duration,
    size: usize,
}

impl Workers {
    /// The process's pool, sized from the environment at first use; a value that does not parse
    /// is reported on stderr and the default kept.
    pub fn get() -> &'static Workers {
        static WORKERS: OnceLock<Workers> = OnceLock::new();
        WORKERS.get_or_init(|| {
            let size = match std::env::var("TOLLGATE_DEMO_WORKERS") {
                Ok(text) => text.trim().parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                    eprintln!("TOLLGATE_DEMO_WORKERS={text:?} is not a positive number; using 16");
                    16
                }),
                Err(_) => 16,
            };
            let work = match std::env::var("TOLLGATE_DEMO_WORK") {
                Ok(text) => tollgate::quota::parse_duration(&text).unwrap_or_else(|e| {
                    eprintln!("TOLLGATE_DEMO_WORK={text:?}: {e}; using 20ms");
                    Duration::from_millis(20)
                }),
                Err(_) => Duration::from_millis(20),
            };
            Workers { pool: Semaphore::new(size), work, size }
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
