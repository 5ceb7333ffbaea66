//! Policies: named limits applied together.
//!
//! A request passes a policy only if it passes every limit that applies, and a refused request
//! consumes nothing from the limits that would have let it through (all-or-nothing).
//!
//! ```
//! use std::num::NonZeroU32;
//! use tollgate::{KeyKind, Limit, Policy, Quota, RequestKeys};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let five = NonZeroU32::new(5).unwrap();
//! let policy = Policy::builder("api")
//!     .limit(Limit::new("per_ip", Quota::per_second(five).with_burst(NonZeroU32::new(10).unwrap())).key(KeyKind::ip()))
//!     .limit(Limit::new("global", Quota::per_second(NonZeroU32::new(1000).unwrap())))
//!     .build()?;
//! let keys = RequestKeys { ip: Some("192.0.2.7".parse().unwrap()), ..RequestKeys::default() };
//! for _ in 0..10 {
//!     assert!(policy.check(&keys, 1).await?.allowed);
//! }
//! let refused = policy.check(&keys, 1).await?;
//! assert!(!refused.allowed);
//! assert_eq!(refused.limit.unwrap().name, "per_ip");
//! # Ok::<(), tollgate::Error>(()) }).unwrap();
//! ```

use std::any::Any;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::algorithm::{Algorithm, OnExceed, Snapshot, capacity};
use crate::client_ip::canonical_net;
use crate::decision::{Admission, Admitted, Decision, LimitHeaders, LimitState, Reason, intern};
use crate::error::Error;
use crate::key::{Key, OwnedKey, group_ip};
use crate::observe::{self, PolicyMetrics};
use crate::quota::Quota;
use crate::request::RequestHeaders;
use crate::store::{Check, LimitSpec, MemoryLimit, MemoryStore, Store, StoreError};

mod stats;

/// The most limits one policy may hold.
pub const MAX_LIMITS: usize = 32;

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// One count for everyone.
    Global,
    /// The client address, IPv6 grouped by its first `v6_prefix` bits.
    Ip {
        /// Bits of an IPv6 address that identify a client (64 by default).
        v6_prefix: u8,
    },
    /// The identity an authentication layer established ([`RequestKeys::identity`]); anonymous
    /// clients are counted by address instead.
    Identity {
        /// As for [`KeyKind::Ip`], for anonymous clients.
        v6_prefix: u8,
    },
    /// A request header's value (all of its bytes).
    Header(HeaderName),
    /// The matched route ([`RequestKeys::route`]).
    Route,
    /// The application's own key ([`RequestKeys::custom`]).
    Custom,
}

impl KeyKind {
    /// [`KeyKind::Ip`] with IPv6 grouped by /64.
    pub const fn ip() -> Self {
        KeyKind::Ip { v6_prefix: 64 }
    }

    /// [`KeyKind::Identity`] with anonymous IPv6 clients grouped by /64.
    pub const fn identity() -> Self {
        KeyKind::Identity { v6_prefix: 64 }
    }

    /// The key of `request`, if it has one; text and bytes longer than
    /// [`MAX_KEY_BYTES`](crate::key::MAX_KEY_BYTES) as their digest (see [`Key::bounded`]), so
    /// that a client's long header value costs a store no more than a short one.
    pub fn resolve<'a>(&self, request: &RequestKeys<'a>) -> Option<Key<'a>> {
        match self {
            KeyKind::Global => Some(Key::Global),
            KeyKind::Ip { v6_prefix } => request.ip.map(|ip| Key::Ip(group_ip(ip, *v6_prefix))),
            KeyKind::Identity { v6_prefix } => match request.identity {
                Some(id) => Some(Key::Text(id).bounded()),
                None => request.ip.map(|ip| Key::Ip(group_ip(ip, *v6_prefix))),
            },
            KeyKind::Header(name) => request.headers?.first(name).map(|value| Key::Bytes(value).bounded()),
            KeyKind::Route => request.route.map(|route| Key::Text(route).bounded()),
            KeyKind::Custom => request.custom.map(Key::bounded),
        }
    }
}

/// What a limit does with a request whose key cannot be determined (no address, no header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count all such requests under one shared key: omitting a header cannot dodge the limit.
    /// The default.
    #[default]
    Shared,
    /// The limit does not apply.
    Skip,
    /// Refuse the request ([`Reason::KeyMissing`], status 400).
    Refuse,
}

/// What is known of a request, from which limits take their keys. Adapters fill it in.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestKeys<'a> {
    /// The client address (already resolved through trusted proxies).
    pub ip: Option<IpAddr>,
    /// The authenticated identity, if any.
    pub identity: Option<&'a str>,
    /// The matched route.
    pub route: Option<&'a str>,
    /// The request headers (an `http::HeaderMap`, or any [`RequestHeaders`]).
    pub headers: Option<&'a (dyn RequestHeaders + Sync)>,
    /// The client's tier (e.g. `free`, `pro`), choosing among a limit's tier quotas.
    pub tier: Option<&'a str>,
    /// A key of the application's own.
    pub custom: Option<Key<'a>>,
}

/// Which fields of [`RequestKeys`] something reads — a key kind, a policy — so that an adapter
/// takes only those from a request (each is a lookup in the request's extensions or headers).
///
/// ```
/// use tollgate::{KeyFields, KeyKind, Limit, Policy};
///
/// let policy = Policy::builder("api").limit(Limit::new("per_ip", "10/s".parse()?).key(KeyKind::ip())).build()?;
/// assert_eq!(policy.fields(), KeyFields { ip: true, ..KeyFields::NONE });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyFields {
    /// [`RequestKeys::ip`].
    pub ip: bool,
    /// [`RequestKeys::identity`].
    pub identity: bool,
    /// [`RequestKeys::route`].
    pub route: bool,
    /// [`RequestKeys::headers`].
    pub headers: bool,
    /// [`RequestKeys::tier`].
    pub tier: bool,
    /// [`RequestKeys::custom`].
    pub custom: bool,
}

impl KeyFields {
    /// No field.
    pub const NONE: KeyFields =
        KeyFields { ip: false, identity: false, route: false, headers: false, tier: false, custom: false };
    /// Every field.
    pub const ALL: KeyFields =
        KeyFields { ip: true, identity: true, route: true, headers: true, tier: true, custom: true };

    /// The fields either reads.
    #[must_use]
    pub const fn union(self, other: KeyFields) -> KeyFields {
        KeyFields {
            ip: self.ip || other.ip,
            identity: self.identity || other.identity,
            route: self.route || other.route,
            headers: self.headers || other.headers,
            tier: self.tier || other.tier,
            custom: self.custom || other.custom,
        }
    }
}

impl KeyKind {
    /// The fields of [`RequestKeys`] that [`KeyKind::resolve`] reads.
    pub const fn fields(&self) -> KeyFields {
        let none = KeyFields::NONE;
        match self {
            KeyKind::Global => none,
            KeyKind::Ip { .. } => KeyFields { ip: true, ..none },
            KeyKind::Identity { .. } => KeyFields { ip: true, identity: true, ..none },
            KeyKind::Header(_) => KeyFields { headers: true, ..none },
            KeyKind::Route => KeyFields { route: true, ..none },
            KeyKind::Custom => KeyFields { custom: true, ..none },
        }
    }
}

/// One limit of a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    name: &'static str,
    quota: Quota,
    algorithm: Algorithm,
    key: KeyKind,
    on_exceed: OnExceed,
    on_missing: MissingKey,
    tiers: Vec<(Box<str>, Quota)>,
    overrides: Vec<(OwnedKey, Quota)>,
}

impl Limit {
    /// A GCRA limit counted globally; see the builder methods.
    pub fn new(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Self {
            name: intern(&name.into()),
            quota,
            algorithm: Algorithm::Gcra,
            key: KeyKind::Global,
            on_exceed: OnExceed::Reject,
            on_missing: MissingKey::Shared,
            tiers: Vec::new(),
            overrides: Vec::new(),
        }
    }

    /// What it counts by.
    #[must_use]
    pub fn key(mut self, key: KeyKind) -> Self {
        self.key = key;
        self
    }

    /// How it counts.
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// What happens over the limit.
    #[must_use]
    pub fn on_exceed(mut self, on_exceed: OnExceed) -> Self {
        self.on_exceed = on_exceed;
        self
    }

    /// What happens when the key cannot be determined.
    #[must_use]
    pub fn on_missing_key(mut self, on_missing: MissingKey) -> Self {
        self.on_missing = on_missing;
        self
    }

    /// Another quota for requests of `tier` ([`RequestKeys::tier`]).
    #[must_use]
    pub fn tier(mut self, tier: &str, quota: Quota) -> Self {
        self.tiers.push((tier.into(), quota));
        self
    }

    /// Its quota, and those of its tiers and keys.
    fn quotas(&self) -> impl Iterator<Item = Quota> + '_ {
        std::iter::once(self.quota).chain(self.tiers.iter().map(|t| t.1)).chain(self.overrides.iter().map(|o| o.1))
    }

    /// Another quota for one key (takes precedence over tiers).
    #[must_use]
    pub fn override_key(mut self, key: impl Into<OwnedKey>, quota: Quota) -> Self {
        self.overrides.push((key.into(), quota));
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The default quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The algorithm.
    pub fn algorithm_kind(&self) -> Algorithm {
        self.algorithm
    }

    /// What it counts by.
    pub fn key_kind(&self) -> &KeyKind {
        &self.key
    }

    /// The quota for `key` in `tier`: an override's, a tier's or the default. The common case of
    /// neither is decided inline.
    #[inline(always)]
    fn quota_for(&self, key: Key<'_>, tier: Option<&str>) -> Quota {
        if self.overrides.is_empty() && (tier.is_none() || self.tiers.is_empty()) {
            return self.quota;
        }
        self.special_quota(key, tier)
    }

    fn special_quota(&self, key: Key<'_>, tier: Option<&str>) -> Quota {
        if let Some((_, q)) = self.overrides.iter().find(|(k, _)| key.matches(k)) {
            return *q;
        }
        if let Some(tier) = tier
            && let Some((_, q)) = self.tiers.iter().find(|(t, _)| &**t == tier)
        {
            return *q;
        }
        self.quota
    }

    fn max_wait(&self) -> Duration {
        match self.on_exceed {
            OnExceed::Reject => Duration::ZERO,
            OnExceed::Delay { max_wait } => max_wait,
        }
    }
}

/// What a policy does when its store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureMode {
    /// Allow, uncounted ([`Reason::StoreUnavailableFailedOpen`]). The default: a rate limiter
    /// should not take the service down with it.
    #[default]
    Open,
    /// Refuse with 503 ([`Reason::StoreUnavailable`]).
    Closed,
    /// Decide with a local in-memory store of the same limits (per instance, so the many
    /// instances together admit up to N times the quota while the shared store is down).
    Fallback,
}

/// A list of keys and networks (for allow- and deny-lists).
#[derive(Clone, Debug, Default, PartialEq)]
struct KeyList {
    keys: Vec<OwnedKey>,
    nets: Vec<IpNet>,
}

impl KeyList {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.nets.is_empty()
    }

    /// An IP address is listed as its host network, matched against the client's whole address:
    /// a limit's key of an IPv6 client is its /64 network, which the address would never match.
    fn push(&mut self, key: OwnedKey) {
        match key {
            OwnedKey::Ip(ip) => self.push_net(IpNet::from(ip)),
            key => self.keys.push(key),
        }
    }

    /// Networks are kept as the client addresses they are matched against are: canonical (an
    /// IPv4-mapped IPv6 network is its IPv4 network).
    fn push_net(&mut self, net: IpNet) {
        self.nets.push(canonical_net(net));
    }

    fn contains<'k>(&self, request: &RequestKeys<'_>, mut resolved: impl Iterator<Item = Key<'k>>) -> bool {
        if let Some(ip) = request.ip
            && self.nets.iter().any(|n| n.contains(&ip))
        {
            return true;
        }
        resolved.any(|k| self.keys.iter().any(|o| k.matches(o)))
            || request.identity.is_some_and(|id| self.keys.iter().any(|o| Key::Text(id).matches(o)))
    }
}

/// Called on each refusal (and each dry-run refusal), e.g. to log or alert.
pub type ViolationHook = Arc<dyn Fn(&Decision, &RequestKeys<'_>) + Send + Sync>;

/// Builds a [`Policy`].
pub struct PolicyBuilder {
    name: &'static str,
    limits: Vec<Limit>,
    allow: KeyList,
    deny: KeyList,
    penalty: Option<Duration>,
    dry_run: bool,
    failure: FailureMode,
    on_violation: Option<ViolationHook>,
}

impl fmt::Debug for PolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBuilder").field("name", &self.name).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl PolicyBuilder {
    /// Adds a limit.
    #[must_use]
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Never limit this key (matched against every limit's key and the identity; an IP address
    /// against the client's address, as [`PolicyBuilder::allow_net`] of its host network).
    #[must_use]
    pub fn allow(mut self, key: impl Into<OwnedKey>) -> Self {
        self.allow.push(key.into());
        self
    }

    /// Never limit clients in this network.
    #[must_use]
    pub fn allow_net(mut self, net: IpNet) -> Self {
        self.allow.push_net(net);
        self
    }

    /// Always refuse this key (403; an IP address is matched as in [`PolicyBuilder::allow`]).
    #[must_use]
    pub fn deny(mut self, key: impl Into<OwnedKey>) -> Self {
        self.deny.push(key.into());
        self
    }

    /// Always refuse clients in this network (403).
    #[must_use]
    pub fn deny_net(mut self, net: IpNet) -> Self {
        self.deny.push_net(net);
        self
    }

    /// After a violation, block the offending key on the violated limit for `duration`.
    #[must_use]
    pub fn penalty(mut self, duration: Duration) -> Self {
        self.penalty = Some(duration).filter(|d| !d.is_zero());
        self
    }

    /// Report what would be refused, but refuse nothing.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// What happens when the store fails.
    #[must_use]
    pub fn failure_mode(mut self, failure: FailureMode) -> Self {
        self.failure = failure;
        self
    }

    /// Called on each refusal.
    #[must_use]
    pub fn on_violation(mut self, hook: impl Fn(&Decision, &RequestKeys<'_>) + Send + Sync + 'static) -> Self {
        self.on_violation = Some(Arc::new(hook));
        self
    }

    /// The policy, on the default [`MemoryStore`].
    pub fn build(self) -> Result<Policy<MemoryStore>, Error> {
        self.build_with(MemoryStore::default())
    }

    /// The policy, on `store`.
    pub fn build_with<S: Store>(self, store: S) -> Result<Policy<S>, Error> {
        if self.limits.len() > MAX_LIMITS {
            return Err(Error::config(
                format!("policies.{}.limits", self.name),
                self.limits.len(),
                format!("a policy holds at most {MAX_LIMITS} limits"),
            ));
        }
        let mut limits = Vec::with_capacity(self.limits.len());
        let mut fallback = Vec::new();
        let fallback_store = (self.failure == FailureMode::Fallback).then(MemoryStore::default);
        for (i, limit) in self.limits.into_iter().enumerate() {
            if limits.iter().any(|l: &PolicyLimit<S::Limit>| l.limit.name == limit.name) {
                return Err(Error::config(
                    format!("policies.{}.limits[{i}].name", self.name),
                    limit.name,
                    "limit names must be unique within a policy",
                ));
            }
            for quota in limit.quotas() {
                store.supports(limit.algorithm, &quota).map_err(|err| {
                    Error::config(format!("policies.{}.limits[{i}].quota", self.name), quota, err.to_string())
                })?;
            }
            let spec =
                LimitSpec { name: limit.name.to_string(), policy: self.name.to_string(), algorithm: limit.algorithm };
            let handle = Arc::new(store.register(&spec)?);
            if let Some(fb) = &fallback_store {
                fallback.push(Arc::new(fb.register(&spec)?));
            }
            limits.push(PolicyLimit { limit, handle });
        }
        Ok(Policy {
            inner: Arc::new(Inner {
                name: self.name,
                limits,
                allow: self.allow,
                deny: self.deny,
                penalty: self.penalty,
                dry_run: self.dry_run,
                failure: self.failure,
                on_violation: self.on_violation,
                store,
                fallback: fallback_store.map(|s| (s, fallback)),
                metrics: PolicyMetrics::default(),
            }),
        })
    }
}

impl<S: Store + Clone> Policy<S> {
    /// This policy deciding on the state of `previous`'s limits: each of its limits whose name,
    /// key and algorithm are those of a limit of `previous` takes over that limit's state — its
    /// counters and penalty blocks, in `previous`'s store (and local fallback) — and applies its
    /// own quota to it from the next decision; its other limits start afresh. What `previous`
    /// counted in limits this policy does not take over is dropped with `previous`. Used when a
    /// new configuration replaces a running one ([`LiveEngine`](crate::live::LiveEngine)), so that
    /// a reload forgives no client its spent quota nor its penalty.
    ///
    /// The state carried is the store's own: a limit's quota changing from 10/min to 5/min keeps
    /// the key's counter (a window's count, or GCRA's time at which its bucket is full again) and
    /// from then on compares it with 5/min.
    ///
    /// For GCRA (the default algorithm) that time is the share of the period the key has spent:
    /// a key that emptied its bucket of 10/min stays refused under 5/min until its bucket would
    /// have refilled, and one that spent 3 of 10 (18 s of the minute) has the other 42 s: 3
    /// requests at 5/min. The window algorithms carry their counts: 3 spent of 10 are 3 of 5.
    ///
    /// ```
    /// use tollgate::{Algorithm, KeyKind, Limit, Policy, RequestKeys};
    ///
    /// let per_ip = |quota: &str| {
    ///     let limit = Limit::new("per_ip", quota.parse().unwrap()).key(KeyKind::ip()).algorithm(Algorithm::FixedWindow);
    ///     Policy::builder("api").limit(limit).build()
    /// };
    /// let old = per_ip("3/min")?;
    /// let keys = RequestKeys { ip: Some("192.0.2.1".parse()?), ..RequestKeys::default() };
    /// for _ in 0..3 {
    ///     assert!(old.try_check_now(&keys, 1).unwrap()?.allowed);
    /// }
    /// // The same limit with a higher quota, on the state of the old one: 3 of 5 spent.
    /// let new = per_ip("5/min")?.keeping_state_of(&old);
    /// assert_eq!(new.try_check_now(&keys, 1).unwrap()?.limit.unwrap().snapshot.remaining, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn keeping_state_of(&self, previous: &Policy<S>) -> Policy<S> {
        let (new, old) = (&*self.inner, &*previous.inner);
        let carried = |pl: &PolicyLimit<S::Limit>| old.limits.iter().position(|o| carries(&o.limit, &pl.limit));
        let found: Vec<Option<usize>> = new.limits.iter().map(carried).collect();
        let limits = new
            .limits
            .iter()
            .zip(&found)
            .map(|(pl, i)| PolicyLimit {
                limit: pl.limit.clone(),
                handle: i.map_or_else(|| Arc::clone(&pl.handle), |i| Arc::clone(&old.limits[i].handle)),
            })
            .collect();
        // A carried state is read with the clock of the store it was written with.
        let store = if found.iter().any(Option::is_some) { old.store.clone() } else { new.store.clone() };
        let fallback = match (&new.fallback, &old.fallback) {
            (Some((_, fresh)), Some((old_store, old_handles))) => {
                let handles = fresh
                    .iter()
                    .zip(&found)
                    .map(|(h, i)| i.map_or_else(|| Arc::clone(h), |i| Arc::clone(&old_handles[i])))
                    .collect();
                Some((old_store.clone(), handles))
            }
            (fallback, _) => fallback.clone(),
        };
        Policy {
            inner: Arc::new(Inner {
                name: new.name,
                limits,
                allow: new.allow.clone(),
                deny: new.deny.clone(),
                penalty: new.penalty,
                dry_run: new.dry_run,
                failure: new.failure,
                on_violation: new.on_violation.clone(),
                store,
                fallback,
                metrics: PolicyMetrics::default(),
            }),
        }
    }
}

/// Whether `new` takes over the state of `old`: the same name, key and algorithm (a state
/// counted by another key, or kept by another algorithm, means something else).
pub(crate) fn carries(old: &Limit, new: &Limit) -> bool {
    old.name == new.name && old.key == new.key && old.algorithm == new.algorithm
}

/// What an allowed check of `limit` under `quota` leaves for the response: its wait and, when
/// `with_headers`, its header numbers.
#[inline]
fn admitted(limit: &Limit, quota: Quota, snapshot: &Snapshot, with_headers: bool) -> Admitted {
    let headers = if with_headers { Some(LimitHeaders::of(limit.name, quota, snapshot)) } else { None };
    Admitted { wait: snapshot.wait, headers }
}

/// Whether the refusal `snapshot` of `check` was the key's own violation, which the penalty
/// blocks: not a penalty block already, nor the in-memory store refusing a key it could not track
/// because it is full of busy keys (see [`crate::OnFull`]), which the key did nothing to earn.
fn violated<H: 'static>(check: &Check<'_, H>, snapshot: &Snapshot) -> bool {
    if snapshot.allowed || snapshot.blocked {
        return false;
    }
    (check.limit as &dyn Any).downcast_ref::<MemoryLimit>().is_none_or(|limit| limit.tracks(check.key))
}

/// Whether the refusal `snapshot` of `check` is the in-memory store's answer for a new key it
/// could not track, its table being full of busy keys (see [`crate::OnFull`]): not a violation.
/// Only a refusal shaped as the store's `full` answer (nothing left, back in exactly a second) is
/// looked up, so that other refusals pay nothing for the question.
#[inline]
fn untracked<H: 'static>(check: &Check<'_, H>, snapshot: &Snapshot) -> bool {
    const SECOND: Duration = Duration::from_secs(1);
    let shaped = snapshot.remaining == 0 && snapshot.reset_after == SECOND && snapshot.retry_after == SECOND;
    shaped && !snapshot.blocked && !violated(check, snapshot)
}

/// What one limit does for a request (see `Policy::limit_check`).
enum Step<'k, H> {
    Check(Check<'k, H>),
    Skip,
    Refuse,
}

/// A limit with its state's handle: shared, so that a policy built from a new configuration can
/// decide on the state of the running one's limit ([`Policy::keeping_state_of`]).
struct PolicyLimit<H> {
    limit: Limit,
    handle: Arc<H>,
}

impl<H> Clone for PolicyLimit<H> {
    fn clone(&self) -> Self {
        Self { limit: self.limit.clone(), handle: Arc::clone(&self.handle) }
    }
}

struct Inner<S: Store> {
    name: &'static str,
    limits: Vec<PolicyLimit<S::Limit>>,
    allow: KeyList,
    deny: KeyList,
    penalty: Option<Duration>,
    dry_run: bool,
    failure: FailureMode,
    on_violation: Option<ViolationHook>,
    store: S,
    fallback: Option<(MemoryStore, Vec<Arc<MemoryLimit>>)>,
    metrics: PolicyMetrics,
}

/// Named limits applied together, on a store. Cheap to clone.
pub struct Policy<S: Store = MemoryStore> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Policy<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S: Store> fmt::Debug for Policy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.inner.name)
            .field("limits", &self.inner.limits.iter().map(|l| &l.limit).collect::<Vec<_>>())
            .field("dry_run", &self.inner.dry_run)
            .field("failure", &self.inner.failure)
            .finish_non_exhaustive()
    }
}

type Checks<'a, H> = SmallVec<[Check<'a, H>; 4]>;
type Snapshots = SmallVec<[Snapshot; 4]>;

impl Policy<MemoryStore> {
    /// A builder for a policy named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> PolicyBuilder {
        PolicyBuilder {
            name: intern(&name.into()),
            limits: Vec::new(),
            allow: KeyList::default(),
            deny: KeyList::default(),
            penalty: None,
            dry_run: false,
            failure: FailureMode::default(),
            on_violation: None,
        }
    }
}

impl<S: Store> Policy<S> {
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.inner.name
    }

    /// Its limits.
    pub fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.inner.limits.iter().map(|l| &l.limit)
    }

    /// The fields of [`RequestKeys`] its checks read: its limits' keys and tiers, and all of them
    /// when it has an allow- or deny-list or a violation hook (which sees the whole request).
    pub fn fields(&self) -> KeyFields {
        let inner = &*self.inner;
        if !inner.allow.is_empty() || !inner.deny.is_empty() || inner.on_violation.is_some() {
            return KeyFields::ALL;
        }
        inner.limits.iter().fold(KeyFields::NONE, |fields, pl| {
            let tier = KeyFields { tier: !pl.limit.tiers.is_empty(), ..KeyFields::NONE };
            fields.union(pl.limit.key.fields()).union(tier)
        })
    }

    /// Its store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Whether `other` applies the same settings besides its limits: allow- and deny-lists,
    /// penalty, dry-run and failure mode (what a reload reports as changed besides quotas).
    pub(crate) fn same_settings(&self, other: &Policy<S>) -> bool {
        let (a, b) = (&*self.inner, &*other.inner);
        a.allow == b.allow
            && a.deny == b.deny
            && a.penalty == b.penalty
            && a.dry_run == b.dry_run
            && a.failure == b.failure
    }

    /// Whether `self` and `other` are one policy (clones of it), not merely alike.
    pub(crate) fn same(&self, other: &Policy<S>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Lifts the penalty block of `key` on the limit `limit` (see [`PolicyBuilder::penalty`]):
    /// its next request is decided by the limit's quota alone. Lifting a block that is not there
    /// does nothing. Errors when the policy has no such limit, or the store fails or cannot lift
    /// blocks ([`Store::unblock`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Key, KeyKind, Limit, Policy, Reason, RequestKeys};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let policy = Policy::builder("api")
    ///     .limit(Limit::new("per_ip", "1/s".parse()?).key(KeyKind::ip()))
    ///     .penalty(Duration::from_secs(600))
    ///     .build()?;
    /// let ip = "192.0.2.1".parse()?;
    /// let keys = RequestKeys { ip: Some(ip), ..RequestKeys::default() };
    /// assert!(policy.check(&keys, 1).await?.allowed);
    /// assert_eq!(policy.check(&keys, 1).await?.reason, Reason::RateLimited); // blocked for 10 min
    /// policy.lift_penalty("per_ip", Key::Ip(ip)).await?;
    /// assert_ne!(policy.check(&keys, 1).await?.reason, Reason::Blocked);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn lift_penalty(&self, limit: &str, key: Key<'_>) -> Result<(), Error> {
        let inner = &*self.inner;
        let Some(i) = inner.limits.iter().position(|l| l.limit.name == limit) else {
            return Err(Error::config(
                format!("policies.{}.limits", inner.name),
                format!("{limit:?}"),
                "no such limit",
            ));
        };
        if let Some((store, handles)) = &inner.fallback {
            // Blocks recorded while the shared store was down live in the local fallback.
            store.unblock_now(&handles[i], key);
        }
        inner.store.unblock(&inner.limits[i].handle, key).await?;
        tracing::info!(policy = inner.name, limit, key = ?key.to_owned_key(), "tollgate lifted a penalty");
        Ok(())
    }

    /// Checks a request of `cost` (1 for a request; bytes for a byte limit) against every limit.
    ///
    /// Errors only on a cost that can never pass (0, or above a limit's capacity); a store
    /// failure becomes a decision per the policy's [`FailureMode`].
    pub async fn check(&self, request: &RequestKeys<'_>, cost: u32) -> Result<Decision, Error> {
        let started = self.inner.metrics.start();
        let (mut checks, mut refs) = (Checks::new(), SmallVec::new());
        if let Some(decision) = self.plan(request, cost, &mut checks, &mut refs)? {
            return Ok(decision);
        }
        let mut out: Snapshots = SmallVec::from_elem(Snapshot::EMPTY, checks.len());
        let result = self.inner.store.check(&checks, &mut out).await;
        if let (Ok(false), Some(penalty), false) = (&result, self.inner.penalty, self.inner.dry_run) {
            for (c, s) in checks.iter().zip(&out) {
                if violated(c, s) {
                    let r = self.inner.store.block(c.limit, c.key, penalty).await;
                    self.penalized(r);
                }
            }
        }
        let decision = self.conclude(result, request, &checks, &refs, &mut out);
        self.inner.metrics.decided(self.inner.name, started);
        Ok(decision)
    }

    /// [`Policy::check`] without a future when the store decides without I/O (the in-memory
    /// store, see [`Store::try_check_now`]); `None` when the check must go through
    /// [`Policy::check`].
    ///
    /// ```
    /// use tollgate::{KeyKind, Limit, Policy, RequestKeys};
    ///
    /// let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
    /// let keys = RequestKeys { ip: Some("192.0.2.1".parse()?), ..RequestKeys::default() };
    /// assert!(policy.try_check_now(&keys, 1).expect("the memory store decides at once")?.allowed);
    /// assert!(!policy.try_check_now(&keys, 1).expect("the memory store decides at once")?.allowed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_check_now(&self, request: &RequestKeys<'_>, cost: u32) -> Option<Result<Decision, Error>> {
        if let Some(one) = self.single() {
            return self.try_check_one(
                one,
                request,
                cost,
                |check, snapshot| self.decide(true, &[0], std::slice::from_ref(check), std::slice::from_ref(snapshot)),
                |decision| decision,
            );
        }
        self.try_check_many(request, cost)
    }

    /// [`Policy::try_check_now`] for a middleware's hot path: an allowed request gets only its
    /// wait and, when `with_headers`, its limit's header numbers; a refused one what `refuse` makes
    /// of its decision (see [`Admission`]). The decision is the one [`Policy::try_check_now`]
    /// would reach; `None` when the check must go through [`Policy::admit`].
    ///
    /// ```
    /// use tollgate::{Admission, KeyKind, Limit, Policy, RequestKeys};
    ///
    /// let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
    /// let keys = RequestKeys { ip: Some("192.0.2.1".parse()?), ..RequestKeys::default() };
    /// // A refusal is answered with its retry-after; a middleware would build its response here.
    /// let retry_after = |refused: tollgate::Decision| refused.retry_after_secs();
    /// match policy.try_admit_now(&keys, 1, true, retry_after) {
    ///     Some(Ok(Admission::Admitted(admitted))) => assert_eq!(admitted.headers.map(|h| h.remaining), Some(0)),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(matches!(policy.try_admit_now(&keys, 1, true, retry_after), Some(Ok(Admission::Refused(60)))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_admit_now<R>(
        &self,
        request: &RequestKeys<'_>,
        cost: u32,
        with_headers: bool,
        refuse: impl FnOnce(Decision) -> R,
    ) -> Option<Result<Admission<R>, Error>> {
        if let Some(one) = self.single() {
            match self.try_admit_memory(one, request, cost, with_headers) {
                Some(Ok(admitted)) => return Some(Ok(Admission::Admitted(admitted))),
                Some(Err(decision)) => return Some(Ok(Admission::of(decision, with_headers, refuse))),
                None => {}
            }
            let allowed = |check: &Check<'_, S::Limit>, snapshot: &Snapshot| {
                Admission::Admitted(admitted(&one.limit, check.quota, snapshot, with_headers))
            };
            return self.try_check_one(one, request, cost, allowed, |d| Admission::of(d, with_headers, refuse));
        }
        Some(self.try_check_many(request, cost)?.map(|d| Admission::of(d, with_headers, refuse)))
    }

    /// [`Policy::check`] answered as [`Policy::try_admit_now`] answers it, for stores with I/O.
    ///
    /// ```
    /// use tollgate::{Admission, KeyKind, Limit, Policy, RequestKeys};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
    /// let keys = RequestKeys { ip: Some("192.0.2.1".parse()?), ..RequestKeys::default() };
    /// let status = |refused: tollgate::Decision| refused.status();
    /// assert!(matches!(policy.admit(&keys, 1, false, status).await?, Admission::Admitted(a) if a.headers.is_none()));
    /// assert_eq!(policy.admit(&keys, 1, false, status).await?, Admission::Refused(http::StatusCode::TOO_MANY_REQUESTS));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })
    /// # .unwrap();
    /// ```
    pub async fn admit<R>(
        &self,
        request: &RequestKeys<'_>,
        cost: u32,
        with_headers: bool,
        refuse: impl FnOnce(Decision) -> R,
    ) -> Result<Admission<R>, Error> {
        Ok(Admission::of(self.check(request, cost).await?, with_headers, refuse))
    }

    /// The policy's one limit when it has no allow- or deny-list: the common policy, checked
    /// without the batch machinery.
    #[inline]
    fn single(&self) -> Option<&PolicyLimit<S::Limit>> {
        let inner = &*self.inner;
        match &inner.limits[..] {
            [one] if inner.allow.is_empty() && inner.deny.is_empty() => Some(one),
            _ => None,
        }
    }

    /// [`Policy::try_check_now`] of any policy.
    fn try_check_many(&self, request: &RequestKeys<'_>, cost: u32) -> Option<Result<Decision, Error>> {
        let (mut checks, mut refs) = (Checks::new(), SmallVec::new());
        match self.plan(request, cost, &mut checks, &mut refs) {
            Ok(None) => {}
            Ok(Some(decision)) => return Some(Ok(decision)),
            Err(err) => return Some(Err(err)),
        }
        let mut out: Snapshots = SmallVec::from_elem(Snapshot::EMPTY, checks.len());
        let result = self.inner.store.try_check_now(&checks, &mut out)?;
        self.penalize_now(&self.inner.store, &result, &checks, &out);
        Some(Ok(self.conclude(result, request, &checks, &refs, &mut out)))
    }

    /// The policy's one limit checked at once ([`Policy::single`]): `allowed` makes the answer of
    /// a check the store allowed, from the check and its snapshot; `decided` the answer of any
    /// other decision (a refusal, a skipped or missing key, a store failure).
    #[inline]
    fn try_check_one<R>(
        &self,
        one: &PolicyLimit<S::Limit>,
        request: &RequestKeys<'_>,
        cost: u32,
        allowed: impl FnOnce(&Check<'_, S::Limit>, &Snapshot) -> R,
        decided: impl FnOnce(Decision) -> R,
    ) -> Option<Result<R, Error>> {
        let check = match self.limit_check(one, request, cost) {
            Ok(Step::Check(check)) => check,
            Ok(Step::Skip) => return Some(Ok(decided(self.finish(self.plain(true, Reason::Allowed), request)))),
            Ok(Step::Refuse) => return Some(Ok(decided(self.finish(self.plain(false, Reason::KeyMissing), request)))),
            Err(err) => return Some(Err(err)),
        };
        let checks = std::slice::from_ref(&check);
        let mut out = [Snapshot::EMPTY];
        let result = self.inner.store.try_check_now(checks, &mut out)?;
        if let Ok(true) = result {
            self.inner.metrics.decision(self.inner.name, Reason::Allowed, !out[0].wait.is_zero());
            return Some(Ok(allowed(&check, &out[0])));
        }
        Some(Ok(decided(self.concluded_one(result, request, &check, out))))
    }

    /// The decision on the policy's one limit other than an allowed check: a refusal (with the
    /// penalty blocked first), a store failure.
    fn concluded_one(
        &self,
        result: Result<bool, StoreError>,
        request: &RequestKeys<'_>,
        check: &Check<'_, S::Limit>,
        mut out: [Snapshot; 1],
    ) -> Decision {
        let checks = std::slice::from_ref(check);
        self.penalize_now(&self.inner.store, &result, checks, &out);
        self.conclude(result, request, checks, &[0], &mut out)
    }

    /// [`Policy::try_admit_now`] of a policy whose one limit is a GCRA limit on the in-memory
    /// store, with the key found and the cost valid: straight to the limit's table
    /// ([`MemoryLimit::try_gcra`]), without the store's batch machinery; a refusal's decision is
    /// then reached as on the general path. `None`, having changed nothing, for any other store,
    /// limit or case, which the general path decides. The store's type is known when the policy
    /// is compiled: for other stores this is no code at all. The proptest
    /// `admissions_are_the_decisions_of_try_check_now` holds it to the general path.
    #[inline(always)]
    fn try_admit_memory(
        &self,
        one: &PolicyLimit<S::Limit>,
        request: &RequestKeys<'_>,
        cost: u32,
        with_headers: bool,
    ) -> Option<Result<Admitted, Decision>> {
        let memory = (&self.inner.store as &dyn Any).downcast_ref::<MemoryStore>()?;
        let limit = (&*one.handle as &dyn Any).downcast_ref::<MemoryLimit>()?;
        // `limit_check`'s rules, inline: through it (its `Step` and `Check`) this path costs about
        // 50 instructions more. Its other outcomes (a missing key, a bad cost) go to the general path.
        let key = one.limit.key.resolve(request)?;
        let quota = one.limit.quota_for(key, request.tier);
        if cost == 0 || cost > quota.burst().get() {
            return None;
        }
        let max_wait = one.limit.max_wait();
        let snapshot = limit.try_gcra(key, &quota, memory.now(), cost, max_wait)?;
        if snapshot.allowed {
            self.inner.metrics.decision(self.inner.name, Reason::Allowed, !snapshot.wait.is_zero());
            return Some(Ok(admitted(&one.limit, quota, &snapshot, with_headers)));
        }
        let check = Check { limit: &*one.handle, key, quota, cost, max_wait };
        Some(Err(self.concluded_one(Ok(false), request, &check, [snapshot])))
    }

    /// Blocks the refused keys for the policy's penalty, on `store` (the policy's, or its local
    /// fallback in an outage) when it decides at once. Whether there is anything to block is
    /// decided inline; the blocking is not.
    #[inline(always)]
    fn penalize_now<T: Store>(
        &self,
        store: &T,
        result: &Result<bool, StoreError>,
        checks: &[Check<'_, T::Limit>],
        out: &[Snapshot],
    ) {
        if let (Some(penalty), Ok(false), false) = (self.inner.penalty, result, self.inner.dry_run) {
            self.block_refused_now(store, penalty, checks, out);
        }
    }

    fn block_refused_now<T: Store>(
        &self,
        store: &T,
        penalty: Duration,
        checks: &[Check<'_, T::Limit>],
        out: &[Snapshot],
    ) {
        for (c, s) in checks.iter().zip(out) {
            if violated(c, s) {
                let r = store.try_block_now(c.limit, c.key, penalty);
                self.penalized(r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable("the store decided at once but cannot block at once".into()))
                }));
            }
        }
    }

    /// What one limit does for a request: check its key, skip it, or refuse the request (a
    /// missing key, per the limit's [`MissingKey`] rule).
    #[inline]
    fn limit_check<'k>(
        &'k self,
        pl: &'k PolicyLimit<S::Limit>,
        request: &RequestKeys<'k>,
        cost: u32,
    ) -> Result<Step<'k, S::Limit>, Error> {
        let key = match pl.limit.key.resolve(request) {
            Some(k) => k,
            None => match pl.limit.on_missing {
                MissingKey::Shared => Key::Text("\u{0}missing"),
                MissingKey::Skip => return Ok(Step::Skip),
                MissingKey::Refuse => return Ok(Step::Refuse),
            },
        };
        let quota = pl.limit.quota_for(key, request.tier);
        let cap = capacity(pl.limit.algorithm, &quota);
        if cost == 0 || u64::from(cost) > cap {
            return Err(Error::InvalidCost { cost, capacity: cap });
        }
        Ok(Step::Check(Check { limit: &*pl.handle, key, quota, cost, max_wait: pl.limit.max_wait() }))
    }

    /// Fills in the checks a request needs (with each one's index in the policy's limits), or
    /// returns a decision reached without the store (allow/deny lists, a missing key, no limit
    /// applying). The checks are filled in place: they are too large to move cheaply.
    #[inline]
    fn plan<'k>(
        &'k self,
        request: &RequestKeys<'k>,
        cost: u32,
        checks: &mut Checks<'k, S::Limit>,
        refs: &mut SmallVec<[usize; 4]>,
    ) -> Result<Option<Decision>, Error> {
        let inner = &*self.inner;
        for (i, pl) in inner.limits.iter().enumerate() {
            match self.limit_check(pl, request, cost)? {
                Step::Check(check) => {
                    checks.push(check);
                    refs.push(i);
                }
                Step::Skip => {}
                Step::Refuse => return Ok(Some(self.finish(self.plain(false, Reason::KeyMissing), request))),
            }
        }
        if !inner.deny.is_empty() && inner.deny.contains(request, checks.iter().map(|c| c.key)) {
            return Ok(Some(self.finish(self.plain(false, Reason::DenyListed), request)));
        }
        if !inner.allow.is_empty() && inner.allow.contains(request, checks.iter().map(|c| c.key)) {
            return Ok(Some(self.finish(self.plain(true, Reason::AllowListed), request)));
        }
        if checks.is_empty() {
            return Ok(Some(self.finish(self.plain(true, Reason::Allowed), request)));
        }
        Ok(None)
    }

    /// Whether the store decides without I/O, so that [`Policy::try_check_now`] always answers
    /// (the in-memory store does; a Redis store does not).
    pub fn decides_at_once(&self) -> bool {
        self.inner.store.try_check_now(&[], &mut []).is_some()
    }

    /// The decision from the store's answer.
    #[inline(always)]
    fn conclude(
        &self,
        result: Result<bool, StoreError>,
        request: &RequestKeys<'_>,
        checks: &[Check<'_, S::Limit>],
        refs: &[usize],
        out: &mut [Snapshot],
    ) -> Decision {
        match result {
            Ok(all) => self.finish(self.decide(all, refs, checks, out), request),
            Err(err) => self.on_store_error(&err, request, checks, refs, out),
        }
    }

    fn penalized(&self, result: Result<(), StoreError>) {
        if let Err(err) = result {
            tracing::warn!(policy = %self.inner.name, error = %err, "tollgate could not record a penalty");
        }
    }

    fn plain(&self, allowed: bool, reason: Reason) -> Decision {
        Decision { allowed, reason, policy: self.inner.name, limit: None, wait: Duration::ZERO, dry_run_refused: false }
    }

    #[inline]
    fn decide(&self, all: bool, refs: &[usize], checks: &[Check<'_, S::Limit>], out: &[Snapshot]) -> Decision {
        let mut best: Option<usize> = None;
        for (i, s) in out.iter().enumerate() {
            let better = match best {
                None => true,
                Some(b) if all => s.headroom() < out[b].headroom(),
                Some(b) => !s.allowed && (out[b].allowed || s.retry_after > out[b].retry_after),
            };
            if better {
                best = Some(i);
            }
        }
        let limit = best.map(|i| LimitState {
            name: self.inner.limits[refs[i]].limit.name,
            quota: checks[i].quota,
            snapshot: out[i],
        });
        let blocked = limit.as_ref().is_some_and(|l| l.snapshot.blocked);
        let wait = if all { out.iter().map(|s| s.wait).max().unwrap_or_default() } else { Duration::ZERO };
        Decision {
            allowed: all,
            reason: if all {
                Reason::Allowed
            } else if blocked {
                Reason::Blocked
            } else if best.is_some_and(|i| untracked(&checks[i], &out[i])) {
                Reason::KeyTableFull
            } else {
                Reason::RateLimited
            },
            policy: self.inner.name,
            limit,
            wait,
            dry_run_refused: false,
        }
    }

    /// Counts a decision reached on any path but the allowed check's, and applies dry-run and
    /// the violation hook to a refusal.
    #[inline]
    fn finish(&self, mut decision: Decision, request: &RequestKeys<'_>) -> Decision {
        self.inner.metrics.decision(self.inner.name, decision.reason, !decision.wait.is_zero());
        if !decision.allowed {
            self.refused(&mut decision, request);
        }
        decision
    }

    /// The refusal side of [`Policy::finish`], out of the allow path.
    #[cold]
    fn refused(&self, decision: &mut Decision, request: &RequestKeys<'_>) {
        {
            self.count_refusal(decision, request);
            tracing::debug!(policy = %decision.policy, reason = decision.reason.as_str(),
                limit = decision.limit.as_ref().map(|l| l.name), "tollgate refused a request");
            if let Some(hook) = &self.inner.on_violation {
                hook(decision, request);
            }
            if self.inner.dry_run {
                decision.allowed = true;
                decision.dry_run_refused = true;
            }
        }
    }

    fn on_store_error(
        &self,
        err: &StoreError,
        request: &RequestKeys<'_>,
        checks: &[Check<'_, S::Limit>],
        refs: &[usize],
        out: &mut [Snapshot],
    ) -> Decision {
        tracing::warn!(policy = %self.inner.name, error = %err, mode = ?self.inner.failure, "tollgate store failed");
        observe::store_failure(self.inner.name, self.inner.failure);
        self.inner.metrics.counts.store_failure();
        match (&self.inner.fallback, self.inner.failure) {
            (Some((store, handles)), FailureMode::Fallback) => {
                let local: Checks<'_, _> = checks
                    .iter()
                    .zip(refs)
                    .map(|(c, &i)| Check {
                        limit: &*handles[i],
                        key: c.key,
                        quota: c.quota,
                        cost: c.cost,
                        max_wait: c.max_wait,
                    })
                    .collect();
                let all = store.check_now(&local, out);
                // The penalty holds in the outage too, on the local limiter's keys.
                self.penalize_now(store, &Ok(all), &local, out);
                self.finish(self.decide(all, refs, checks, out), request)
            }
            (_, FailureMode::Closed) => self.finish(self.plain(false, Reason::StoreUnavailable), request),
            _ => self.finish(self.plain(true, Reason::StoreUnavailableFailedOpen), request),
        }
    }
}
