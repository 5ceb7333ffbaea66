//! A Redis store for [`tollgate`]: several server instances share one set of limits, on one
//! Redis node or a Redis Cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::{FailureMode, KeyKind, Limit, Policy, RequestKeys};
//! use tollgate_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379/")
//!     .prefix("myapp")
//!     .timeout(Duration::from_millis(100))
//!     .build()
//!     .await?; // fails here, naming the URL, when Redis cannot be reached
//! let policy = Policy::builder("api")
//!     .limit(Limit::new("per_ip", "100/10s".parse()?).key(KeyKind::ip()))
//!     .failure_mode(FailureMode::Fallback) // Redis down: a local limiter per instance
//!     .build_with(store)?;
//! let keys = RequestKeys { ip: Some("192.0.2.7".parse()?), ..RequestKeys::default() };
//! let decision = policy.check(&keys, 1).await?;
//! # let _ = decision;
//! # Ok(())
//! # }
//! ```
//!
//! # How it decides
//!
//! Every decision is one `EVALSHA` of one Lua script, which checks all the limits of a batch
//! atomically and all-or-nothing, with the same integer arithmetic as the in-memory store
//! (GCRA, sliding-window counter, sliding log, fixed window, delays, penalty blocks); the core's
//! store conformance suite runs against it. Time is the Redis server's `TIME`, so instances'
//! clocks do not matter. Idle keys expire on their own (TTL: until the state is as good as new).
//! Scripts are reloaded by themselves after a restart or `SCRIPT FLUSH` (`NOSCRIPT`).
//!
//! # Refusals answered locally
//!
//! A key Redis refused is refused by the instance itself until the retry-after Redis gave has
//! passed, with the same headers, without a round trip: a flood from a few refused clients costs
//! Redis next to nothing. On by default; see the [`near_cache`] module for which refusals are
//! remembered and why that is exact, and [`RedisStoreBuilder::near_cache`] to turn it off.
//!
//! # Keys and Redis Cluster
//!
//! Keys are `<prefix>:{<digest of the client key>}:...`: the braces are the Redis Cluster hash
//! tag, so all the limits of one client key land in one slot and one script checks them. Client
//! keys of any bytes stay in their own key and cannot move the tag. In a cluster, a batch whose
//! client keys differ (e.g. a global limit and a per-IP one) spans slots; it is then decided in two
//! phases: every slot is peeked (no writes; a refusal ends there, consuming nothing), then
//! committed, and if a slot refuses at commit (a race lost since the peek) the other slots are
//! refunded. No quota is ever exceeded; for one round trip a refunded batch's capacity may look
//! taken to concurrent checks, which then err on refusing. It costs two round trips instead of one.
//! If the decision's timeout strikes between the commit and the refunds, the refunds do not run:
//! the capacity comes back as the state refills (conservative: never over-admitting). Each slot's
//! keys use the time of the node that holds them.
//!
//! # Failures
//!
//! One long-lived multiplexed connection per store (`ConnectionManager`, or the cluster client),
//! reconnecting by itself. A decision that takes longer than the timeout fails with
//! [`StoreError::Timeout`](tollgate::StoreError::Timeout); after a run of failures a circuit
//! breaker fails decisions at once with [`StoreError::Unavailable`](tollgate::StoreError::Unavailable)
//! without touching the network, then probes, and closes as soon as Redis answers. What a failed
//! decision means (fail open, fail closed, or a local in-memory limiter) is the policy's
//! [`FailureMode`](tollgate::FailureMode).
//!
//! # Concurrency leases
//!
//! [`RedisStore`] implements [`tollgate::LeaseStore`]: leases held across instances, heartbeated,
//! and expiring on their own when their holder dies. See the `lease` module docs.
//!
//! # Limits
//!
//! Lua numbers are doubles, exact up to 2^53; the scripts keep absolute times as decimal strings
//! and compute on times relative to the current second, which is exact for quotas whose period,
//! and whose full bucket (emission interval × burst), are at most 2^51 ns (about 26 days). Longer
//! quotas are refused when the policy is built (`tollgate::Error::Config` naming the limit's
//! quota, from [`Error::QuotaOutOfRange`]), so a monthly quota never reaches a check. Penalty
//! blocks are capped at a century. The store needs a Tokio runtime.

mod breaker;
mod error;
mod keys;
pub mod lease;
pub mod near_cache;
mod script;
mod store;

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_support;

pub use error::Error;
pub use near_cache::{DEFAULT_NEAR_CACHE_MAX_KEYS, NEAR_CACHE_HITS, NearCacheStats};
pub use store::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LEASE_TTL, DEFAULT_PREFIX,
    DEFAULT_TIMEOUT, RedisLimit, RedisStore, RedisStoreBuilder,
};
