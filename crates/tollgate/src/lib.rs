//! # tollgate
//!
//! The core of tollgate: quotas, rate-limiting algorithms, keyed stores, policies and decisions,
//! with no web framework in its dependencies. The adapters (`tollgate-tower`, ...) plug it into
//! servers; `tollgate-redis` shares state between instances.
//!
//! ```
//! use tollgate::{KeyKind, Limit, Policy, RequestKeys};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let policy = Policy::builder("api")
//!     .limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip()))
//!     .build()?;
//! let keys = RequestKeys { ip: Some("203.0.113.9".parse().unwrap()), ..Default::default() };
//! let decision = policy.check(&keys, 1).await?;
//! assert!(decision.allowed);
//! assert_eq!(decision.limit.unwrap().snapshot.remaining, 9);
//! # Ok::<(), tollgate::Error>(()) }).unwrap();
//! ```
//!
//! The parts, each in its module: [`Quota`] (n per period with a burst, parsed from `"100/10s"`),
//! the [`Algorithm`]s (GCRA, sliding window, sliding log, fixed window; reject or delay), [`Key`]s,
//! [`Store`]s ([`MemoryStore`] here), [`Policy`] (named limits, all-or-nothing, tiers, allow and
//! deny lists, penalties, dry-run, failure modes), [`Decision`] and its rendering to headers and
//! bodies ([`HeaderOptions`]), [`ConcurrencyLimiter`] and its [`ConnectionLease`], the stand-alone
//! [`DirectLimiter`] and [`KeyedLimiter`], and [`Config`] (TOML).
//!
//! [`stats`]: what the limiter decided, who it refused most and how its stores are, as a
//! snapshot, JSON and a live dashboard page, read from counts the decisions keep anyway.
//!
//! Features: `std` (default), `metrics` (decisions, store failures, leases and WebSocket verdicts
//! through the `metrics` facade: see [`observe`]), `testing` (the store conformance suite).

pub mod algorithm;
pub mod client_ip;
pub mod clock;
pub mod concurrency;
pub mod config;
pub mod decision;
pub mod engine;
pub mod error;
pub mod headers;
pub mod key;
pub mod limiter;
pub mod live;
pub mod observe;
pub mod policy;
pub mod quota;
pub mod request;
pub mod stats;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod websocket;

pub use algorithm::{Algorithm, OnExceed, Snapshot};
pub use client_ip::{ClientIpResolver, ForwardingHeader};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use concurrency::{
    AdaptiveLimit, ConcurrencyDenied, ConcurrencyLimiter, ConcurrencyScope, ConnectionLease, LeaseRelease, LeaseStore,
};
pub use config::Config;
pub use decision::{Admission, Admitted, Decision, LimitHeaders, LimitState, Reason};
pub use error::Error;
pub use headers::{BodyFormat, HeaderOptions, HeaderSink, ResetStyle};
pub use key::{Key, OwnedKey};
pub use limiter::{DirectLimiter, KeyedLimiter, NotUntil};
pub use policy::{FailureMode, KeyFields, KeyKind, Limit, MissingKey, Policy, PolicyBuilder, RequestKeys};
pub use quota::Quota;
pub use store::{Check, LimitSpec, MemoryStore, OnFull, Store, StoreError};
