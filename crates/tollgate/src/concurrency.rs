//! Concurrency limits: at most `n` in flight per key (requests, WebSocket connections) and
//! globally, held by an RAII [`ConnectionLease`] released on drop — also when the holder's task
//! panics or its future is cancelled, since both drop it.
//!
//! ```
//! use tollgate::{ConcurrencyLimiter, ConcurrencyScope, Key};
//!
//! let limiter = ConcurrencyLimiter::new("ws").per_key(2).global(100);
//! let a = limiter.try_acquire(Key::Text("alice")).unwrap();
//! let _b = limiter.try_acquire(Key::Text("alice")).unwrap();
//! let refused = limiter.try_acquire(Key::Text("alice")).unwrap_err();
//! assert_eq!(refused.scope, ConcurrencyScope::PerKey);
//! drop(a);
//! assert!(limiter.try_acquire(Key::Text("alice")).is_ok());
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::key::{Key, OwnedKey};
use crate::store::StoreError;
use crate::store::table::{Full, Table};

/// Which cap refused a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConcurrencyScope {
    /// The key already holds its maximum (adapters answer 429).
    PerKey,
    /// The global cap is full (adapters answer 503).
    Global,
}

/// A refused lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit `{name}` reached ({scope:?}: {limit} in use)")]
pub struct ConcurrencyDenied {
    /// The limiter's name.
    pub name: Arc<str>,
    /// Which cap refused.
    pub scope: ConcurrencyScope,
    /// That cap.
    pub limit: u32,
}

/// Releases a lease held elsewhere (e.g. in Redis); implemented by distributed stores.
pub trait LeaseRelease: Send + Sync + 'static {
    /// Gives the lease back. Called once, from [`ConnectionLease`]'s drop: it must not block
    /// (spawn the network call if one is needed).
    fn release(self: Box<Self>);
}

/// A store of concurrency leases shared by many instances (implemented by `tollgate-redis`).
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes a lease for `key` under the limiter `name` when fewer than `per_key` are held for
    /// the key and fewer than `global` in all.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        key: Key<'a>,
        per_key: Option<u32>,
        global: Option<u32>,
    ) -> impl Future<Output = Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError>> + Send + 'a;
}

/// A held place under a concurrency limit, given back on drop. Move it into whatever lives as
/// long as the connection or request (the upgraded socket, the response body).
#[must_use = "the place is given back as soon as the lease is dropped"]
pub struct ConnectionLease {
    kind: LeaseKind,
}

enum LeaseKind {
    Memory { limiter: Arc<Inner>, key: Option<OwnedKey>, global: bool },
    Custom(Option<Box<dyn LeaseRelease>>),
}

impl fmt::Debug for ConnectionLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            LeaseKind::Memory { limiter, key, .. } => {
                f.debug_struct("ConnectionLease").field("limiter", &limiter.name).field("key", key).finish()
            }
            LeaseKind::Custom(_) => f.debug_struct("ConnectionLease").finish_non_exhaustive(),
        }
    }
}

impl ConnectionLease {
    /// A lease given back by `release` (for distributed stores).
    pub fn from_release(release: impl LeaseRelease) -> Self {
        Self { kind: LeaseKind::Custom(Some(Box::new(release))) }
    }
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        match &mut self.kind {
            LeaseKind::Memory { limiter, key, global } => {
                if let Some(key) = key.take() {
                    limiter.per_key.get(&key.as_key(), |c| c.fetch_sub(1, Ordering::AcqRel));
                }
                if *global {
                    limiter.total.fetch_sub(1, Ordering::AcqRel);
                }
            }
            LeaseKind::Custom(release) => {
                if let Some(r) = release.take() {
                    r.release();
                }
            }
        }
    }
}

struct Inner {
    name: Arc<str>,
    per_key_cap: Option<u32>,
    global_cap: Option<u32>,
    per_key: Table<OwnedKey, AtomicU32>,
    total: AtomicUsize,
}

/// An in-memory keyed counting semaphore. Cheap to clone (clones share counts).
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("name", &self.inner.name)
            .field("per_key", &self.inner.per_key_cap)
            .field("global", &self.inner.global_cap)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl ConcurrencyLimiter {
    /// A limiter with no caps yet (see [`Self::per_key`], [`Self::global`]).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::build(name.into(), None, None)
    }

    fn build(name: Arc<str>, per_key_cap: Option<u32>, global_cap: Option<u32>) -> Self {
        let shards = std::thread::available_parallelism().map_or(4, usize::from) * 4;
        Self {
            inner: Arc::new(Inner {
                name,
                per_key_cap,
                global_cap,
                per_key: Table::new(shards, crate::store::DEFAULT_MAX_KEYS),
                total: AtomicUsize::new(0),
            }),
        }
    }

    /// At most `n` at once per key.
    #[must_use]
    pub fn per_key(self, n: u32) -> Self {
        Self::build(Arc::clone(&self.inner.name), Some(n), self.inner.global_cap)
    }

    /// At most `n` at once in all.
    #[must_use]
    pub fn global(self, n: u32) -> Self {
        Self::build(Arc::clone(&self.inner.name), self.inner.per_key_cap, Some(n))
    }

    /// How many leases are held in all.
    pub fn in_use(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }

    /// How many leases `key` holds.
    pub fn in_use_by(&self, key: Key<'_>) -> u32 {
        self.inner.per_key.get(&key, |c| c.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Takes a place for `key`, or says which cap is full. Never waits.
    pub fn try_acquire(&self, key: Key<'_>) -> Result<ConnectionLease, ConcurrencyDenied> {
        let inner = &self.inner;
        let denied = |scope, limit| ConcurrencyDenied { name: Arc::clone(&inner.name), scope, limit };
        // Counted globally even without a global cap, for `in_use`.
        let global_cap = inner.global_cap.map_or(usize::MAX, |g| g as usize);
        if inner.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < global_cap).then_some(n + 1)).is_err()
        {
            return Err(denied(ConcurrencyScope::Global, inner.global_cap.unwrap_or(0)));
        }
        // From here the global place is held by `lease`: any early return gives it back.
        let mut lease =
            ConnectionLease { kind: LeaseKind::Memory { limiter: Arc::clone(inner), key: None, global: true } };
        let Some(cap) = inner.per_key_cap else { return Ok(lease) };
        let got = inner.per_key.with(
            &key,
            0,
            |c, _| c.load(Ordering::Acquire) == 0,
            |c| c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_ok(),
        );
        match got {
            Ok(true) => {
                if let LeaseKind::Memory { key: slot, .. } = &mut lease.kind {
                    *slot = Some(key.to_owned_key());
                }
                Ok(lease)
            }
            Ok(false) | Err(Full) => Err(denied(ConcurrencyScope::PerKey, cap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_comes_back_when_the_holder_panics() {
        let limiter = ConcurrencyLimiter::new("t").per_key(1);
        let l2 = limiter.clone();
        let r = std::thread::spawn(move || {
            let _lease = l2.try_acquire(Key::Int(1)).unwrap();
            panic!("handler panicked");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(limiter.in_use(), 0);
        assert!(limiter.try_acquire(Key::Int(1)).is_ok());
    }

    #[tokio::test]
    async fn lease_comes_back_when_its_future_is_cancelled() {
        let limiter = ConcurrencyLimiter::new("t").per_key(1).global(1);
        let l2 = limiter.clone();
        let task = tokio::spawn(async move {
            let _lease = l2.try_acquire(Key::Int(1)).unwrap();
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        while limiter.in_use() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.try_acquire(Key::Int(2)).unwrap_err().scope, ConcurrencyScope::Global);
        task.abort();
        let _ = task.await;
        assert_eq!(limiter.in_use(), 0);
        assert_eq!(limiter.in_use_by(Key::Int(1)), 0);
        assert!(limiter.try_acquire(Key::Int(1)).is_ok());
    }

    #[test]
    fn per_key_refusal_gives_the_global_place_back() {
        let limiter = ConcurrencyLimiter::new("t").per_key(1).global(10);
        let _a = limiter.try_acquire(Key::Int(1)).unwrap();
        assert_eq!(limiter.try_acquire(Key::Int(1)).unwrap_err().scope, ConcurrencyScope::PerKey);
        assert_eq!(limiter.in_use(), 1);
    }
}
