//! Stores: where per-key state lives.
//!
//! A store performs checks of several limits at once, **all-or-nothing**: either every check
//! passes and each consumes its cost, or nothing is consumed. [`MemoryStore`] is the default; the
//! `tollgate-redis` crate provides a store shared by many instances. Every store must pass the
//! conformance suite in [`crate::testing`] (feature `testing`).

use std::future::Future;
use std::time::Duration;

use crate::algorithm::{Algorithm, Snapshot};
use crate::key::Key;
use crate::quota::Quota;
use crate::stats::StoreHealth;

pub mod memory;
pub(crate) mod table;

pub use memory::{DEFAULT_MAX_KEYS, MemoryLimit};
pub use table::KeyLookup;

pub use memory::{MemoryStore, MemoryStoreBuilder, OnFull};

/// What a store needs to know of a limit to hold its state: the policy registers each limit once
/// with [`Store::register`] and keeps the returned handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    /// The name, unique within its policy (e.g. `per_ip`).
    pub name: String,
    /// The policy it belongs to; with `name` it namespaces the state.
    pub policy: String,
    /// How it counts.
    pub algorithm: Algorithm,
}

/// One limit to check in a batch.
#[derive(Debug)]
pub struct Check<'a, H> {
    /// The handle [`Store::register`] returned for the limit.
    pub limit: &'a H,
    /// Whose state to check.
    pub key: Key<'a>,
    /// The quota for this key (it may differ per key: tiers).
    pub quota: Quota,
    /// How much this check spends; `1..=capacity` (checked by the caller).
    pub cost: u32,
    /// The longest the caller will wait (the delay action); zero to reject at once.
    pub max_wait: Duration,
}

/// Why a store could not decide. The policy's failure mode decides what follows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within its timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store cannot be reached (connection refused, circuit breaker open, ...).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered something unexpected.
    #[error("the store answered unexpectedly: {0}")]
    Protocol(String),
    /// The store refused a new key because it is full (see [`OnFull`]).
    #[error("the store is full ({0} keys)")]
    Full(usize),
    /// Any other failure, with its cause.
    #[error("store error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where rate-limit state lives. Implemented by [`MemoryStore`] and by `tollgate_redis::RedisStore`.
///
/// Futures returned by an in-memory store are ready at once; the trait uses `impl Future` so the
/// in-memory path is neither boxed nor slowed.
pub trait Store: Send + Sync + 'static {
    /// The store's handle of one registered limit.
    type Limit: Send + Sync + 'static;

    /// Registers a limit (once, when a policy is built).
    fn register(&self, spec: &LimitSpec) -> Result<Self::Limit, StoreError>;

    /// Whether this store can decide `quota` under `algorithm`, asked of every quota of a limit
    /// (its tiers' and keys' too) when a policy is built, so that a quota the store cannot run is
    /// a build error rather than a failure at every check. Every quota by default.
    fn supports(&self, algorithm: Algorithm, quota: &Quota) -> Result<(), StoreError> {
        let _ = (algorithm, quota);
        Ok(())
    }

    /// Checks every entry of `checks`, all-or-nothing, writing each one's standing to the same
    /// index of `out` (`out.len() == checks.len()`). Returns whether all passed.
    ///
    /// When one is refused, nothing is consumed, and the refused entries of `out` carry their
    /// `retry_after`; an entry of a key under a penalty block is refused with `blocked` set.
    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a, Self::Limit>],
        out: &'a mut [Snapshot],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a;

    /// [`Store::check`] without a future, for a store that decides without I/O (the in-memory
    /// store): `Some(result)` when it could, `None` when the check must go through
    /// [`Store::check`]. Adapters call this first so that the in-memory path polls no future.
    /// A store answers here for every batch or for none (an empty batch tells which, see
    /// [`crate::Policy::decides_at_once`]), and then answers [`Store::try_block_now`] too.
    fn try_check_now(
        &self,
        checks: &[Check<'_, Self::Limit>],
        out: &mut [Snapshot],
    ) -> Option<Result<bool, StoreError>> {
        let _ = (checks, out);
        None
    }

    /// [`Store::block`] without a future, when the store can (see [`Store::try_check_now`]).
    fn try_block_now(&self, limit: &Self::Limit, key: Key<'_>, duration: Duration) -> Option<Result<(), StoreError>> {
        let _ = (limit, key, duration);
        None
    }

    /// How the store is doing, for [stats snapshots](crate::stats) (its breaker, its cache):
    /// asked once per snapshot, never on a request's path. A store that decides in this process
    /// is always [`StoreHealth::ok`], the default.
    fn health(&self) -> StoreHealth {
        StoreHealth::ok("custom")
    }

    /// How many keys `limit` tracks here, for [stats snapshots](crate::stats); `None` (the
    /// default) when the store cannot tell cheaply (a shared store holds them elsewhere).
    fn tracked_keys(&self, limit: &Self::Limit) -> Option<u64> {
        let _ = limit;
        None
    }

    /// Blocks `key` on `limit` for `duration` (a penalty after a violation): until then every check
    /// of that key on that limit is refused with `blocked` set. A longer existing block is kept.
    fn block<'a>(
        &'a self,
        limit: &'a Self::Limit,
        key: Key<'a>,
        duration: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// Lifts the block of `key` on `limit` ([`Store::block`]), if any: its next check is decided by
    /// its quota alone (its counter is left as it is). An operator's action
    /// ([`Policy::lift_penalty`](crate::Policy::lift_penalty)), never on a request's path. A
    /// store that cannot lift blocks answers an error, the default.
    fn unblock<'a>(
        &'a self,
        limit: &'a Self::Limit,
        key: Key<'a>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        let _ = (limit, key);
        std::future::ready(Err(StoreError::Unavailable("this store cannot lift penalty blocks".into())))
    }
}
