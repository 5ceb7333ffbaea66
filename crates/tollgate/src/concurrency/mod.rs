//! Concurrency limits: at most `n` in flight per key (requests, WebSocket connections) and
//! globally, held by an RAII [`ConnectionLease`] released on drop — also when the holder's task
//! panics or its future is cancelled, since both drop it.
//!
//! A limiter counts in this process's memory, or — with [`ConcurrencyLimiter::shared`] — in a
//! [`LeaseStore`] shared by every instance (e.g. `tollgate_redis::RedisStore`), through the
//! asynchronous [`ConcurrencyLimiter::acquire`].
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

pub mod adaptive;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::decision::{Decision, Reason, intern};
use crate::key::{Key, OwnedKey};
use crate::observe::{self, LeaseMetrics};
use crate::policy::FailureMode;
use crate::store::StoreError;
use crate::store::table::{Full, Table};

use adaptive::LatencySample;
pub use adaptive::{AdaptiveAlgorithm, AdaptiveBuilder, AdaptiveLimit, AdaptiveSettings, Outcome};

/// Which cap refused a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConcurrencyScope {
    /// The key already holds its maximum (adapters answer 429).
    PerKey,
    /// The global cap is full (adapters answer 503).
    Global,
    /// The shared [`LeaseStore`] failed and the limiter fails closed (adapters answer 503).
    StoreUnavailable,
    /// The [adaptive limit](AdaptiveLimit) is full: the service is at what it can take now
    /// (adapters answer 503).
    Adaptive,
}

/// A refused lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit `{name}` reached ({scope:?}: {limit} in use)")]
pub struct ConcurrencyDenied {
    /// The limiter's name.
    pub name: &'static str,
    /// Which cap refused.
    pub scope: ConcurrencyScope,
    /// That cap.
    pub limit: u32,
}

impl ConcurrencyDenied {
    /// A refusal by the limiter `name` (for [`LeaseStore`] implementations).
    pub fn new(name: &str, scope: ConcurrencyScope, limit: u32) -> Self {
        Self { name: intern(name), scope, limit }
    }

    /// The refusal as a [`Decision`], for rendering like any other refusal (`Retry-After: 1`,
    /// the limiter's name as the policy; no quota headers, as a concurrency cap has no period).
    ///
    /// Why one second: a place comes back when a holder lets go — a response body finishing, a
    /// socket closing — which no limiter can foresee (unlike a rate, whose next token is on a
    /// clock). The honest answer is "soon, unknown", and `Retry-After` cannot say that; its
    /// smallest value, one second, makes a well-behaved client retry promptly without
    /// hammering, and a longer guess would idle clients for places that are often freed within
    /// milliseconds.
    pub fn decision(&self) -> Decision {
        Decision {
            allowed: false,
            reason: match self.scope {
                ConcurrencyScope::StoreUnavailable => Reason::StoreUnavailable,
                ConcurrencyScope::PerKey | ConcurrencyScope::Global | ConcurrencyScope::Adaptive => Reason::RateLimited,
            },
            policy: self.name,
            limit: None,
            wait: std::time::Duration::ZERO,
            dry_run_refused: false,
        }
    }

    /// 429 when the client holds its maximum; 503 when the global or adaptive cap is full or the
    /// lease store is down (the server, not the client, is at its limit).
    pub fn status(&self) -> http::StatusCode {
        match self.scope {
            ConcurrencyScope::PerKey => http::StatusCode::TOO_MANY_REQUESTS,
            ConcurrencyScope::Global | ConcurrencyScope::StoreUnavailable | ConcurrencyScope::Adaptive => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
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
    /// Under an adaptive limit: when the request started, for [`ConnectionLease::record`].
    sample: Option<LatencySample>,
}

enum LeaseKind {
    Memory {
        counts: Arc<Counts>,
        key: Option<OwnedKey>,
        global: bool,
    },
    Custom(Option<Box<dyn LeaseRelease>>),
    /// A lease of a shared store, with the same place in this process's memory (a `Memory`
    /// lease): see [`ConcurrencyLimiter::acquire`]. Both are given back when it is dropped.
    Shared {
        local: Box<ConnectionLease>,
        lease: Box<ConnectionLease>,
    },
    /// No place held: admitted uncounted while the shared store failed (fail open).
    Uncounted,
}

impl fmt::Debug for ConnectionLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            LeaseKind::Memory { counts, key, .. } => {
                f.debug_struct("ConnectionLease").field("limiter", &counts.name).field("key", key).finish()
            }
            LeaseKind::Shared { local, lease } => f.debug_tuple("Shared").field(local).field(lease).finish(),
            LeaseKind::Custom(_) | LeaseKind::Uncounted => f.debug_struct("ConnectionLease").finish_non_exhaustive(),
        }
    }
}

impl ConnectionLease {
    /// A lease given back by `release` (for distributed stores).
    pub fn from_release(release: impl LeaseRelease) -> Self {
        Self::of(LeaseKind::Custom(Some(Box::new(release))))
    }

    fn of(kind: LeaseKind) -> Self {
        Self { kind, sample: None }
    }

    /// Tells the limiter's [adaptive limit](AdaptiveLimit), if it has one, how the request went,
    /// once its response is ready: its latency (from the lease's acquisition) and outcome count
    /// in the limit's measuring window. Once per lease (later calls do nothing); a lease dropped
    /// without it — a request cancelled — is not counted. The middleware calls it with the
    /// response's status; call it yourself when you take leases by hand. The place is still held
    /// until the lease is dropped.
    pub fn record(&mut self, outcome: Outcome) {
        if let Some(sample) = self.sample.take() {
            sample.record(outcome);
        }
    }

    /// The lease's latency sample, to be recorded apart from it (a WebSocket connection's lease
    /// lives as long as the socket; its sample ends with the upgrade's response).
    pub(crate) fn take_sample(&mut self) -> Option<LatencySample> {
        self.sample.take()
    }

    pub(crate) fn sample_mut(&mut self) -> Option<&mut LatencySample> {
        self.sample.as_mut()
    }
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        match &mut self.kind {
            LeaseKind::Memory { counts, key, global } => {
                if let Some(key) = key.take() {
                    counts.per_key.get(&key.as_key(), |c| c.fetch_sub(1, Ordering::AcqRel));
                }
                if *global {
                    counts.total.fetch_sub(1, Ordering::AcqRel);
                    counts.metrics.leases(counts.name, -1);
                }
            }
            LeaseKind::Custom(release) => {
                if let Some(r) = release.take() {
                    r.release();
                }
            }
            // Both leases give their places back when dropped with `self`.
            LeaseKind::Shared { .. } | LeaseKind::Uncounted => {}
        }
    }
}

/// The result of a lease store's `acquire`, boxed.
type BoxAcquire<'a> =
    Pin<Box<dyn Future<Output = Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError>> + Send + 'a>>;

/// [`LeaseStore`] made object-safe, so that a limiter holds any store without a type parameter.
trait DynLeaseStore: Send + Sync + 'static {
    fn acquire_boxed<'a>(
        &'a self,
        name: &'a str,
        key: Key<'a>,
        per_key: Option<u32>,
        global: Option<u32>,
    ) -> BoxAcquire<'a>;
}

impl<L: LeaseStore> DynLeaseStore for L {
    fn acquire_boxed<'a>(
        &'a self,
        name: &'a str,
        key: Key<'a>,
        per_key: Option<u32>,
        global: Option<u32>,
    ) -> BoxAcquire<'a> {
        Box::pin(self.acquire(name, key, per_key, global))
    }
}

struct Inner {
    settings: Settings,
    counts: Arc<Counts>,
}

/// The places held in this process: apart from the caps, so that the limiter of a new
/// configuration can count on with the leases taken under the running one
/// ([`ConcurrencyLimiter::keeping_counts_of`]); each lease holds them to give its place back.
struct Counts {
    name: &'static str,
    per_key: Table<OwnedKey, AtomicU32>,
    total: AtomicUsize,
    metrics: LeaseMetrics,
}

/// A keyed counting semaphore: in this process's memory, or in a shared [`LeaseStore`]
/// ([`ConcurrencyLimiter::shared`]). Cheap to clone (clones share counts).
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("name", &self.inner.settings.name)
            .field("per_key", &self.inner.settings.per_key_cap)
            .field("global", &self.inner.settings.global_cap)
            .field("adaptive", &self.inner.settings.adaptive)
            .field("shared", &self.inner.settings.shared.is_some())
            .field("failure_mode", &self.inner.settings.failure)
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// What a limiter is built from: everything but its counts.
#[derive(Clone)]
struct Settings {
    name: &'static str,
    per_key_cap: Option<u32>,
    global_cap: Option<u32>,
    adaptive: Option<AdaptiveLimit>,
    max_keys: usize,
    shared: Option<Arc<dyn DynLeaseStore>>,
    failure: FailureMode,
}

impl ConcurrencyLimiter {
    /// A limiter with no caps yet (see [`Self::per_key`], [`Self::global`]), in memory.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::build(Settings {
            name: intern(&name.into()),
            per_key_cap: None,
            global_cap: None,
            adaptive: None,
            max_keys: crate::store::DEFAULT_MAX_KEYS,
            shared: None,
            // With a shared store, its outage leaves each instance its own caps.
            failure: FailureMode::Fallback,
        })
    }

    fn settings(&self) -> Settings {
        self.inner.settings.clone()
    }

    fn build(s: Settings) -> Self {
        let shards = std::thread::available_parallelism().map_or(4, usize::from) * 4;
        let counts = Arc::new(Counts {
            name: s.name,
            per_key: Table::new(shards, s.max_keys),
            total: AtomicUsize::new(0),
            metrics: LeaseMetrics::default(),
        });
        Self::with_counts(s, counts)
    }

    fn with_counts(s: Settings, counts: Arc<Counts>) -> Self {
        if let Some(adaptive) = &s.adaptive {
            adaptive.name(s.name);
        }
        Self { inner: Arc::new(Inner { settings: s, counts }) }
    }

    /// This limiter counting on with `previous`'s places: the leases `previous` gave out count
    /// against this limiter's caps, and give their places back to it when dropped; this
    /// limiter's caps apply from its next lease. A lower cap than the places held refuses new
    /// leases until enough are given back; none is taken away. Used when a new configuration
    /// replaces a running one ([`LiveEngine`](crate::live::LiveEngine)), so that the requests and
    /// sockets open across a reload stay counted. The per-key table is `previous`'s, with its
    /// bound on keys. An [adaptive limit](Self::adaptive) carries on from `previous`'s
    /// ([`AdaptiveLimit::continuing`]): what it learned stays.
    ///
    /// ```
    /// use tollgate::{ConcurrencyLimiter, Key};
    ///
    /// let old = ConcurrencyLimiter::new("uploads").per_key(3);
    /// let _a = old.try_acquire(Key::Text("alice")).unwrap();
    /// let _b = old.try_acquire(Key::Text("alice")).unwrap();
    /// let new = ConcurrencyLimiter::new("uploads").per_key(2).keeping_counts_of(&old);
    /// assert_eq!(new.in_use_by(Key::Text("alice")), 2);
    /// assert!(new.try_acquire(Key::Text("alice")).is_err(), "2 held, 2 allowed");
    /// drop(_a);
    /// assert!(new.try_acquire(Key::Text("alice")).is_ok());
    /// ```
    #[must_use]
    pub fn keeping_counts_of(&self, previous: &ConcurrencyLimiter) -> Self {
        let adaptive = match (&self.inner.settings.adaptive, &previous.inner.settings.adaptive) {
            (Some(new), Some(old)) => Some(new.continuing(old)),
            (new, _) => new.clone(),
        };
        let settings = Settings { max_keys: previous.inner.settings.max_keys, adaptive, ..self.settings() };
        Self::with_counts(settings, Arc::clone(&previous.inner.counts))
    }

    /// Whether `self` and `other` count the same places (clones, or one
    /// [keeping the counts](Self::keeping_counts_of) of the other).
    pub fn shares_counts_with(&self, other: &ConcurrencyLimiter) -> bool {
        Arc::ptr_eq(&self.inner.counts, &other.inner.counts)
    }

    /// Whether `self` and `other` are one limiter (clones of it), not merely alike.
    pub(crate) fn same(&self, other: &ConcurrencyLimiter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The most leases one key may hold, if capped.
    pub fn per_key_cap(&self) -> Option<u32> {
        self.inner.settings.per_key_cap
    }

    /// The most leases held in all, if capped.
    pub fn global_cap(&self) -> Option<u32> {
        self.inner.settings.global_cap
    }

    /// At most `n` at once per key.
    #[must_use]
    pub fn per_key(self, n: u32) -> Self {
        Self::build(Settings { per_key_cap: Some(n), ..self.settings() })
    }

    /// At most `n` at once in all.
    #[must_use]
    pub fn global(self, n: u32) -> Self {
        Self::build(Settings { global_cap: Some(n), ..self.settings() })
    }

    /// At most what `limit` allows now, in all, in this process: a cap that follows the
    /// service's latency and failures (see [`adaptive`]). Refusals say
    /// [`ConcurrencyScope::Adaptive`] (503). Each lease's latency counts once the request's
    /// [outcome is recorded](ConnectionLease::record) — the middleware records it when the
    /// response is ready. With a [`global`](Self::global) cap too, the lower of the two holds.
    #[must_use]
    pub fn adaptive(self, limit: AdaptiveLimit) -> Self {
        Self::build(Settings { adaptive: Some(limit), ..self.settings() })
    }

    /// The adaptive limit, if the limiter has one.
    pub fn adaptive_limit(&self) -> Option<&AdaptiveLimit> {
        self.inner.settings.adaptive.as_ref()
    }

    /// Tracks at most about `n` keys holding leases at once (to within each shard's slack, as
    /// [`MemoryStoreBuilder::max_keys`](crate::store::MemoryStoreBuilder::max_keys)), so that a
    /// flood of distinct keys cannot grow the per-key table without bound; a new key beyond it is
    /// refused as its cap would be ([`ConcurrencyScope::PerKey`]) until keys let go. Default:
    /// [`DEFAULT_MAX_KEYS`](crate::store::DEFAULT_MAX_KEYS); a [`Config`](crate::Config) passes
    /// its `store.max_keys`.
    #[must_use]
    pub fn max_keys(self, n: usize) -> Self {
        Self::build(Settings { max_keys: n.max(1), ..self.settings() })
    }

    /// The most keys the per-key table tracks (the bound of [`Self::max_keys`] with each shard's
    /// slack).
    pub fn key_capacity(&self) -> usize {
        self.inner.counts.per_key.capacity()
    }

    /// Counts the leases in `store`, shared by every instance using it under this limiter's
    /// name (e.g. `tollgate_redis::RedisStore`: leases heartbeated, expiring when their holder
    /// dies). Take them with [`Self::acquire`]. Limiters with different names count apart, so
    /// two limits of one application need two names.
    ///
    /// ```
    /// # async fn run(store: impl tollgate::LeaseStore) {
    /// use tollgate::{ConcurrencyLimiter, FailureMode, Key};
    ///
    /// let limiter = ConcurrencyLimiter::new("ws_open").per_key(3).shared(store).failure_mode(FailureMode::Closed);
    /// assert!(!limiter.decides_at_once());
    /// match limiter.acquire(Key::Text("alice")).await {
    ///     Ok(lease) => { /* keep `lease` as long as the connection */ }
    ///     Err(refused) => { /* 429 for refused.scope == PerKey, else 503 */ }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn shared(self, store: impl LeaseStore) -> Self {
        Self::build(Settings { shared: Some(Arc::new(store)), ..self.settings() })
    }

    /// What [`Self::acquire`] does when the shared store fails: [`FailureMode::Fallback`] (the
    /// default) counts in this process's memory with the same caps (the places this process
    /// holds in the store included), [`FailureMode::Open`] admits uncounted (no cap holds while
    /// the store fails, but a process already holding a cap of counted places is refused before
    /// the store is asked; on a limiter with an [adaptive](Self::adaptive) cap, this process's
    /// counts and that cap still hold), [`FailureMode::Closed`] refuses
    /// ([`ConcurrencyScope::StoreUnavailable`]).
    /// Every failure is logged.
    #[must_use]
    pub fn failure_mode(self, mode: FailureMode) -> Self {
        Self::build(Settings { failure: mode, ..self.settings() })
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.inner.settings.name
    }

    /// Whether [`Self::try_acquire`] decides: the counts are in this process's memory (no
    /// shared store), so no future is needed.
    pub fn decides_at_once(&self) -> bool {
        self.inner.settings.shared.is_none()
    }

    /// How many leases this process holds in all (shared ones included).
    pub fn in_use(&self) -> usize {
        self.inner.counts.total.load(Ordering::Acquire)
    }

    /// How many leases `key` holds in this process (shared ones included; other instances'
    /// are in the store).
    pub fn in_use_by(&self, key: Key<'_>) -> u32 {
        self.inner.counts.per_key.get(&key, |c| c.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Takes a place for `key`: from the shared store when there is one — after taking it in
    /// this process's memory under the same caps, so that this process alone never holds more
    /// counted places than a cap whatever the store knows (see [`Self::failure_mode`] for its
    /// failures; [`FailureMode::Open`] admits uncounted ones) — else as [`Self::try_acquire`].
    pub async fn acquire(&self, key: Key<'_>) -> Result<ConnectionLease, ConcurrencyDenied> {
        let inner = &self.inner;
        // An adaptive cap counts this process only: it measures this process's latency.
        let Some(store) = inner
            .settings
            .shared
            .as_ref()
            .filter(|_| inner.settings.per_key_cap.is_some() || inner.settings.global_cap.is_some())
        else {
            return self.try_acquire(key);
        };
        // This process's own places first, under the same caps: whatever the store knows (it
        // never saw the places the fallback gave out during an outage, and may lose its own in a
        // restart or failover), this process alone never holds more counted places than a cap.
        // It is also the place the fallback hands out when the store fails.
        let local = self.try_acquire(key)?;
        match store.acquire_boxed(inner.settings.name, key, inner.settings.per_key_cap, inner.settings.global_cap).await
        {
            Ok(Ok(lease)) => {
                let mut local = local;
                let sample = local.sample.take();
                Ok(ConnectionLease {
                    kind: LeaseKind::Shared { local: Box::new(local), lease: Box::new(lease) },
                    sample,
                })
            }
            Ok(Err(denied)) => {
                observe::lease_refused(inner.settings.name, denied.scope);
                Err(denied)
            }
            Err(error) => {
                tracing::warn!(limiter = %inner.settings.name, %error, mode = ?inner.settings.failure, "concurrency lease store failed");
                observe::store_failure(inner.settings.name, inner.settings.failure);
                match inner.settings.failure {
                    // An adaptive cap is this process's own: it holds whatever the store does.
                    FailureMode::Open if inner.settings.adaptive.is_some() => Ok(local),
                    FailureMode::Open => Ok(ConnectionLease::of(LeaseKind::Uncounted)),
                    FailureMode::Closed => {
                        observe::lease_refused(inner.settings.name, ConcurrencyScope::StoreUnavailable);
                        Err(ConcurrencyDenied {
                            name: inner.settings.name,
                            scope: ConcurrencyScope::StoreUnavailable,
                            limit: 0,
                        })
                    }
                    _ => Ok(local),
                }
            }
        }
    }

    /// Takes a place for `key` in this process's memory, or says which cap is full. Never waits.
    /// On a [`shared`](Self::shared) limiter this counts this process only (as the fallback
    /// does): use [`Self::acquire`].
    pub fn try_acquire(&self, key: Key<'_>) -> Result<ConnectionLease, ConcurrencyDenied> {
        let inner = &self.inner;
        let counts = &inner.counts;
        let denied = |scope, limit| {
            observe::lease_refused(inner.settings.name, scope);
            ConcurrencyDenied { name: inner.settings.name, scope, limit }
        };
        // Counted globally even without a global cap, for `in_use`.
        let global_cap = inner.settings.global_cap.map_or(usize::MAX, |g| g as usize);
        let adaptive_cap = inner.settings.adaptive.as_ref().map_or(usize::MAX, |a| a.current() as usize);
        let cap = global_cap.min(adaptive_cap);
        let held = match counts.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
        {
            Ok(before) => before + 1,
            Err(held) => {
                return Err(match &inner.settings.adaptive {
                    Some(adaptive) if adaptive_cap < global_cap => {
                        adaptive.refused(held);
                        denied(ConcurrencyScope::Adaptive, u32::try_from(adaptive_cap).unwrap_or(u32::MAX))
                    }
                    _ => denied(ConcurrencyScope::Global, inner.settings.global_cap.unwrap_or(0)),
                });
            }
        };
        counts.metrics.leases(counts.name, 1);
        // From here the global place is held by `lease`: any early return gives it back.
        let mut lease = ConnectionLease::of(LeaseKind::Memory { counts: Arc::clone(counts), key: None, global: true });
        if let Some(adaptive) = &inner.settings.adaptive {
            lease.sample = Some(adaptive.admitted(held));
        }
        let Some(cap) = inner.settings.per_key_cap else { return Ok(lease) };
        let got = counts.per_key.with(
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

    /// A lease store that never answers.
    struct Down;

    impl LeaseStore for Down {
        fn acquire<'a>(
            &'a self,
            _: &'a str,
            _: Key<'a>,
            _: Option<u32>,
            _: Option<u32>,
        ) -> impl Future<Output = Result<Result<ConnectionLease, ConcurrencyDenied>, StoreError>> + Send + 'a {
            std::future::ready(Err(StoreError::Unavailable("connection refused".into())))
        }
    }

    #[tokio::test]
    async fn an_adaptive_cap_holds_while_a_failed_open_store_is_down() {
        let adaptive = AdaptiveLimit::aimd(std::time::Duration::from_secs(1)).bounds(1, 10).initial(2).build().unwrap();
        let open = ConcurrencyLimiter::new("t").per_key(5).shared(Down).failure_mode(FailureMode::Open);
        let (a, b) = (open.acquire(Key::Int(1)).await.unwrap(), open.acquire(Key::Int(1)).await.unwrap());
        assert_eq!(open.in_use(), 0, "failed open: uncounted");
        drop((a, b));
        let capped = open.adaptive(adaptive);
        let _held = (capped.acquire(Key::Int(1)).await.unwrap(), capped.acquire(Key::Int(2)).await.unwrap());
        assert_eq!(capped.in_use(), 2, "the places under the adaptive cap are counted");
        assert_eq!(capped.acquire(Key::Int(3)).await.unwrap_err().scope, ConcurrencyScope::Adaptive);
    }

    #[test]
    fn per_key_refusal_gives_the_global_place_back() {
        let limiter = ConcurrencyLimiter::new("t").per_key(1).global(10);
        let _a = limiter.try_acquire(Key::Int(1)).unwrap();
        assert_eq!(limiter.try_acquire(Key::Int(1)).unwrap_err().scope, ConcurrencyScope::PerKey);
        assert_eq!(limiter.in_use(), 1);
    }
}
