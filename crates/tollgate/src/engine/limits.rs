//! The limits of one route: what the engine checks for a request on it.

use std::fmt;
use std::sync::Arc;

use crate::concurrency::ConcurrencyLimiter;
use crate::config::RouteLimits;
use crate::policy::{KeyFields, KeyKind, Policy};
use crate::store::{MemoryStore, Store};
use crate::websocket::MessageLimits;

/// The limits applied to one route (or to every route without its own), checked in this order:
/// the body's size (413), the request policy (cost 1), the body bytes per period (cost: the body's
/// length), the concurrency leases (in-flight requests, WebSocket connections).
///
/// ```
/// use tollgate::engine::Limits;
/// use tollgate::{ConcurrencyLimiter, KeyKind, Limit, Policy};
///
/// let per_ip = Policy::builder("api").limit(Limit::new("per_ip", "10/s".parse()?).key(KeyKind::ip())).build()?;
/// let bytes = Policy::builder("bytes").limit(Limit::new("bytes", "1MiB/min".parse()?).key(KeyKind::ip())).build()?;
/// let limits = Limits::new()
///     .policy(per_ip)
///     .max_body(64 * 1024)
///     .body_bytes(bytes)
///     .in_flight(ConcurrencyLimiter::new("uploads").per_key(2));
/// assert_eq!(limits.max_body_len(), Some(65536));
/// assert!(limits.decides_at_once());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Limits<St: Store = MemoryStore> {
    pub(crate) policy: Option<Policy<St>>,
    pub(crate) max_body: Option<u64>,
    pub(crate) body_bytes: Option<Policy<St>>,
    pub(crate) in_flight: Option<ConcurrencyLimiter>,
    pub(crate) lease_key: Option<KeyKind>,
    pub(crate) websocket: Option<WebSocketLimits>,
    /// Every policy's store and every concurrency limiter decides without I/O: the checks run
    /// at once, nothing boxed.
    at_once: bool,
    /// What the policies' checks read of a request (the lease keys are added per request, see
    /// [`Limits::fields`]).
    policy_fields: KeyFields,
}

/// The WebSocket limits of a route: concurrent connections (the lease lives as long as the
/// socket), the limits on each connection's messages and on each key's messages across its
/// connections, and what the lease and the per-key limits count by. The connection *rate* is the
/// route's request policy, checked on the upgrade request.
#[derive(Clone, Debug)]
pub struct WebSocketLimits {
    pub(crate) connections: ConcurrencyLimiter,
    pub(crate) messages: Arc<MessageLimits>,
    pub(crate) key: Option<KeyKind>,
}

impl WebSocketLimits {
    /// At most what `connections` allows open at once (per key and globally), each connection's
    /// messages limited by `messages`.
    pub fn new(connections: ConcurrencyLimiter, messages: MessageLimits) -> Self {
        Self { connections, messages: Arc::new(messages), key: None }
    }

    /// Counts the connections (and the per-key message limits, see
    /// [`MessageLimits::per_key`]) by `key` — e.g. `KeyKind::Header("x-api-key")` — instead of
    /// the route's [`Limits::lease_key`] or the engine's
    /// [`Engine::lease_key`](super::Engine::lease_key).
    #[must_use]
    pub fn key(mut self, key: KeyKind) -> Self {
        self.key = Some(key);
        self
    }
}

impl<St: Store> Clone for Limits<St> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            max_body: self.max_body,
            body_bytes: self.body_bytes.clone(),
            in_flight: self.in_flight.clone(),
            lease_key: self.lease_key.clone(),
            websocket: self.websocket.clone(),
            at_once: self.at_once,
            policy_fields: self.policy_fields,
        }
    }
}

impl<St: Store> fmt::Debug for Limits<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("policy", &self.policy)
            .field("max_body", &self.max_body)
            .field("body_bytes", &self.body_bytes)
            .field("in_flight", &self.in_flight)
            .field("lease_key", &self.lease_key)
            .field("websocket", &self.websocket)
            .finish()
    }
}

impl Limits<MemoryStore> {
    /// No limit yet.
    pub fn new() -> Self {
        Self::empty()
    }
}

impl Default for Limits<MemoryStore> {
    fn default() -> Self {
        Self::new()
    }
}

impl<St: Store> Limits<St> {
    /// No limit yet, on any store.
    pub fn empty() -> Self {
        Self {
            policy: None,
            max_body: None,
            body_bytes: None,
            in_flight: None,
            lease_key: None,
            websocket: None,
            at_once: true,
            policy_fields: KeyFields::NONE,
        }
    }

    /// Each request costs 1 against `policy` (all of its limits, all-or-nothing).
    #[must_use]
    pub fn policy(mut self, policy: Policy<St>) -> Self {
        self.policy = Some(policy);
        self.refresh();
        self
    }

    /// The largest request body in bytes: larger ones get 413, from `Content-Length` before the
    /// handler runs, or while the body is read (the adapter counts the body against
    /// [`Admit::max_body`](super::Admit::max_body) as it streams).
    #[must_use]
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Request body bytes per period: each request costs its `Content-Length` against `policy`
    /// (429 over it). A body of unknown length costs [`Limits::max_body`]; without a `max_body`
    /// such a request gets 411 Length Required.
    #[must_use]
    pub fn body_bytes(mut self, policy: Policy<St>) -> Self {
        self.body_bytes = Some(policy);
        self.refresh();
        self
    }

    /// In-flight requests: a lease from `limiter` is held until the response body is finished or
    /// dropped (429 when the key holds its maximum, 503 when the global cap is full or a shared
    /// lease store fails closed).
    #[must_use]
    pub fn in_flight(mut self, limiter: ConcurrencyLimiter) -> Self {
        self.in_flight = Some(limiter);
        self.refresh();
        self
    }

    /// Counts this route's concurrency leases — in-flight requests, and WebSocket connections
    /// unless [`WebSocketLimits::key`] says otherwise — by `key` instead of the engine's
    /// [`Engine::lease_key`](super::Engine::lease_key).
    #[must_use]
    pub fn lease_key(mut self, key: KeyKind) -> Self {
        self.lease_key = Some(key);
        self
    }

    /// WebSocket upgrades: see [`WebSocketLimits`] and [`UpgradeLease`](crate::websocket::UpgradeLease).
    #[must_use]
    pub fn websocket(mut self, limits: WebSocketLimits) -> Self {
        self.websocket = Some(limits);
        self.refresh();
        self
    }

    /// The largest request body, if the route has one.
    #[inline]
    pub fn max_body_len(&self) -> Option<u64> {
        self.max_body
    }

    /// Whether every check of the route decides without I/O (in-memory stores, limiters that
    /// count in this process): then [`Engine::check_now`](super::Engine::check_now) answers, with
    /// nothing boxed; else the adapter runs [`Engine::check`](super::Engine::check).
    #[inline]
    pub fn decides_at_once(&self) -> bool {
        self.at_once
    }

    /// These limits with what is derived from them brought up to date (after their parts were
    /// replaced in place).
    pub(crate) fn refreshed(mut self) -> Self {
        self.refresh();
        self
    }

    /// Whether everything decides without I/O, and what the policies read of a request, so that
    /// only that is taken from it.
    fn refresh(&mut self) {
        let limiters = self.in_flight.iter().chain(self.websocket.as_ref().map(|ws| &ws.connections));
        self.at_once = self.policy.iter().chain(&self.body_bytes).all(Policy::decides_at_once)
            && limiters.into_iter().all(ConcurrencyLimiter::decides_at_once);
        self.policy_fields =
            self.policy.iter().chain(&self.body_bytes).fold(KeyFields::NONE, |f, p| f.union(p.fields()));
    }

    /// What the in-flight lease and the WebSocket connection lease (when the route takes them)
    /// are counted by: the WebSocket limits' key, else the route's lease key, else
    /// `engine_lease_key`.
    #[inline]
    pub(crate) fn lease_keys<'a>(
        &'a self,
        engine_lease_key: &'a KeyKind,
    ) -> (Option<&'a KeyKind>, Option<&'a KeyKind>) {
        let route_key = self.lease_key.as_ref().unwrap_or(engine_lease_key);
        let in_flight = self.in_flight.as_ref().map(|_| route_key);
        let websocket = self.websocket.as_ref().map(|ws| ws.key.as_ref().unwrap_or(route_key));
        (in_flight, websocket)
    }

    /// Whether the route takes concurrency leases (in-flight requests, WebSocket connections).
    #[inline]
    pub(crate) fn takes_leases(&self) -> bool {
        self.in_flight.is_some() || self.websocket.is_some()
    }

    /// What the checks read of a request: the policies' keys and the lease keys.
    #[inline]
    pub(crate) fn fields(&self, engine_lease_key: &KeyKind) -> KeyFields {
        if !self.takes_leases() {
            return self.policy_fields;
        }
        let (in_flight, websocket) = self.lease_keys(engine_lease_key);
        [in_flight, websocket].into_iter().flatten().fold(self.policy_fields, |f, k| f.union(k.fields()))
    }
}

impl<St: Store> From<RouteLimits<St>> for Limits<St> {
    /// The route's limits, its leases and per-key message limits counted by the route's key.
    fn from(route: RouteLimits<St>) -> Self {
        let mut limits = Limits::empty().lease_key(route.key.clone());
        if let Some(policy) = route.policy {
            limits = limits.policy(policy);
        }
        if let Some(max) = route.max_body {
            limits = limits.max_body(max);
        }
        if let Some(policy) = route.body_bytes {
            limits = limits.body_bytes(policy);
        }
        if let Some(limiter) = route.in_flight {
            limits = limits.in_flight(limiter);
        }
        if let Some(ws) = route.websocket {
            limits = limits.websocket(WebSocketLimits::new(ws.connections, ws.messages).key(route.key));
        }
        limits
    }
}
