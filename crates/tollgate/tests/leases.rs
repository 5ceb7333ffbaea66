//! A shared concurrency limiter with a lease store that fails on demand (the one fault a real
//! store cannot produce at will here).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tollgate::{
    ConcurrencyDenied, ConcurrencyLimiter, ConcurrencyScope, ConnectionLease, FailureMode, Key, LeaseRelease,
    LeaseStore, StoreError,
};

/// A shared lease store that counts exactly (one key only, for brevity) and can be made to fail,
/// like Redis going away and coming back with its state intact.
#[derive(Clone, Default)]
struct FlakyStore {
    down: Arc<AtomicBool>,
    held: Arc<AtomicU32>,
}

struct Release(Arc<AtomicU32>);

impl LeaseRelease for Release {
    fn release(self: Box<Self>) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LeaseStore for FlakyStore {
    async fn acquire<'a>(
        &'a self,
        name: &'a str,
        _key: Key<'a>,
        per_key: Option<u32>,
        _global: Option<u32>,
    ) -> Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError> {
        if self.down.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let cap = per_key.unwrap_or(u32::MAX);
        if self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_err() {
            return Ok(Err(ConcurrencyDenied::new(name, ConcurrencyScope::PerKey, cap)));
        }
        Ok(Ok(ConnectionLease::from_release(Release(Arc::clone(&self.held)))))
    }
}

/// A place the fallback gave out while the shared store was down is unknown to the store once it
/// is back; the process's own count still holds it, so the cap holds too.
#[tokio::test]
async fn a_fallback_lease_still_counts_once_the_shared_store_is_back() {
    let store = FlakyStore::default();
    let limiter =
        ConcurrencyLimiter::new("flaky-ws").per_key(1).shared(store.clone()).failure_mode(FailureMode::Fallback);
    let alice = Key::Text("alice");

    store.down.store(true, Ordering::Release);
    let during_outage = limiter.acquire(alice).await.expect("fallback admits the first connection");
    assert_eq!(limiter.in_use_by(alice), 1);
    assert!(limiter.acquire(alice).await.is_err(), "fallback enforces per_key(1) during the outage");

    store.down.store(false, Ordering::Release); // the store is back
    let second = limiter.acquire(alice).await;
    assert!(second.is_err(), "per_key(1) exceeded: alice holds {} here ({second:?})", limiter.in_use_by(alice));
    assert_eq!(store.held.load(Ordering::Acquire), 0, "the refused place was not taken in the store either");
    drop(during_outage);
    let back = limiter.acquire(alice).await.expect("the place came back");
    assert_eq!((limiter.in_use_by(alice), store.held.load(Ordering::Acquire)), (1, 1));
    drop(back);
    assert_eq!((limiter.in_use_by(alice), store.held.load(Ordering::Acquire)), (0, 0), "both places given back");

    // Closed: a store failure refuses, and gives this process's place back.
    let closed =
        ConcurrencyLimiter::new("flaky-closed").per_key(1).shared(store.clone()).failure_mode(FailureMode::Closed);
    store.down.store(true, Ordering::Release);
    assert_eq!(closed.acquire(alice).await.unwrap_err().scope, ConcurrencyScope::StoreUnavailable);
    assert_eq!(closed.in_use(), 0);
}
