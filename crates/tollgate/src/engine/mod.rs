//! The HTTP engine: one request path for every framework.
//!
//! An adapter turns its framework's request into a [`RequestView`], asks the [`Engine`], and
//! applies the plan it gets back; everything that decides is here, once:
//!
//! 1. **Route.** [`Engine::limits_for`] picks the request's [`Limits`]: those of the route entry
//!    whose pattern and methods match it (a HEAD that no entry names takes its path's GET
//!    entry, as the GET handler serves it), else the default ones. The route is the framework's
//!    matched route when the adapter knows it ([`RequestView::matched_route`]), else the most
//!    specific of the engine's patterns the URI's path matches — see [the pattern
//!    syntax](#route-patterns).
//! 2. **Checks**, in order: the body's size (413 when its length is over the largest body; 411
//!    when a body-bytes limit cannot tell its cost and the adapter does not count the body as it
//!    streams), the request [`Policy`] (cost 1, all of its limits or none), the body bytes per
//!    period (429; charged as the body streams when its length is unknown and the adapter
//!    counts it, see [`BodyCharge`]), and the concurrency leases —
//!    in-flight requests and WebSocket connections. A refusal spends nothing from the checks
//!    after it; the checks before it are not given back (a request the concurrency limit
//!    refuses has spent one from the request policy), as stores have no refund. With the delay
//!    action the request waits (up to the limit's bound) instead of being refused.
//!    [`Engine::check_now`] runs them at once when the route's stores decide without I/O
//!    ([`Limits::decides_at_once`]: the in-memory store), with nothing boxed; [`Engine::check`]
//!    runs them for stores with I/O (Redis).
//! 3. **Plan.** [`Admit`]: how long to wait, the largest body to count while it streams (and
//!    the body-bytes charge to make as it does), and a
//!    [`ResponsePlan`] that writes the rate-limit headers into the response and hands the
//!    in-flight lease to the response body (and a WebSocket [`UpgradeLease`] to the upgrade
//!    handler). Or a [`Refusal`]: status, header fields and body, rendered by the core's
//!    [`HeaderOptions`].
//!
//! # Route patterns
//!
//! A route's path is a pattern of segments: literal segments (`/api/items`), a named parameter
//! matching one whole segment (`/api/items/{id}`), and a catch-all matching the rest of the path
//! as the last segment (`/files/{*path}`). A path matching several patterns takes the most
//! specific (literal over parameter over catch-all). `{{` and `}}` stand for literal braces. The
//! same pattern means the same on every adapter, whatever the framework's own router syntax; the
//! pattern a request matched is its [`KeyKind::Route`] key. A route name
//! without a leading `/` matches only a route name the adapter reports.
//!
//! ```
//! use std::net::IpAddr;
//! use tollgate::engine::{Engine, Limits};
//! use tollgate::request::{RequestHeaders, RequestView};
//! use tollgate::{KeyKind, Limit, Policy};
//!
//! struct Get { path: &'static str, peer: IpAddr, headers: http::HeaderMap }
//! impl RequestView for Get {
//!     fn method(&self) -> &str { "GET" }
//!     fn path(&self) -> &str { self.path }
//!     fn peer_ip(&self) -> Option<IpAddr> { Some(self.peer) }
//!     fn headers(&self) -> &(dyn RequestHeaders + Sync) { &self.headers }
//!     fn is_http1(&self) -> bool { true }
//! }
//!
//! let per_ip = |quota: &str| -> Result<Policy, tollgate::Error> {
//!     Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()
//! };
//! let engine = Engine::new(Limits::new()).route("/items/{id}", Limits::new().policy(per_ip("1/min")?));
//! let request = Get { path: "/items/7", peer: "203.0.113.9".parse()?, headers: http::HeaderMap::new() };
//!
//! let limits = engine.limits_for(&request);
//! let admit = engine.check_now(limits, &request).expect("the first request passes");
//! let mut headers = http::HeaderMap::new();
//! let _no_lease = admit.response.apply(http::StatusCode::OK, &mut headers);
//! assert_eq!(headers["x-ratelimit-remaining"], "0");
//!
//! let refusal = engine.check_now(limits, &request).expect_err("the second is refused");
//! assert_eq!(refusal.status(), 429);
//! let (headers, body) = refusal.render();
//! assert_eq!(headers["retry-after"], "60");
//! assert_eq!(&body[..], br#"{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":60}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod body;
mod carry;
mod limits;
mod plan;
mod stats;

pub use body::{BodyCharge, BodyCounter, ChargeFuture, ReadError, Sleep};
pub use limits::{Limits, WebSocketLimits};
pub use plan::{Admit, Refusal, ResponsePlan};

use std::fmt;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode};

use self::plan::Leases;
use crate::client_ip::ClientIpResolver;
use crate::concurrency::adaptive::LatencySample;
use crate::concurrency::{ConcurrencyDenied, ConcurrencyLimiter, ConnectionLease, LeaseStore};
use crate::config::{Config, RouteLimits};
use crate::decision::{Admission, Admitted, Decision};
use crate::error::Error;
use crate::headers::HeaderOptions;
use crate::key::Key;
use crate::policy::{KeyKind, Policy, RequestKeys};
use crate::request::RequestView;
use crate::stats::counters::LeaseRefusals;
use crate::store::{MemoryStore, Store, StoreError};
use crate::websocket::UpgradeLease;

/// The configured engine: default limits, per-route limits, how the client address is found,
/// what leases count by, and the header style. Built once and shared by every worker (clone it
/// into an `Arc`); see the [module docs](self).
pub struct Engine<St: Store = MemoryStore> {
    default: Limits<St>,
    routes: Vec<RouteEntry<St>>,
    /// The routes' patterns, each mapped to itself: which one a URI's path matches where the
    /// adapter reports no matched route.
    patterns: matchit::Router<Box<str>>,
    resolver: ClientIpResolver,
    lease_key: KeyKind,
    headers: HeaderOptions,
    /// The leases refused, by limiter and key, for [`Engine::stats`] (clones share them).
    lease_refusals: Arc<LeaseRefusals>,
}

struct RouteEntry<St: Store> {
    path: Box<str>,
    methods: Vec<Method>,
    limits: Limits<St>,
}

impl<St: Store> Clone for RouteEntry<St> {
    fn clone(&self) -> Self {
        Self { path: self.path.clone(), methods: self.methods.clone(), limits: self.limits.clone() }
    }
}

impl<St: Store> fmt::Debug for RouteEntry<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<St: Store> Clone for Engine<St> {
    fn clone(&self) -> Self {
        Self {
            default: self.default.clone(),
            routes: self.routes.clone(),
            patterns: self.patterns.clone(),
            resolver: self.resolver.clone(),
            lease_key: self.lease_key.clone(),
            headers: self.headers,
            lease_refusals: Arc::clone(&self.lease_refusals),
        }
    }
}

impl<St: Store> fmt::Debug for Engine<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("default", &self.default)
            .field("routes", &self.routes)
            .field("resolver", &self.resolver)
            .field("lease_key", &self.lease_key)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Engine<MemoryStore> {
    /// The engine `config` describes, on one in-memory store (see [`Engine::from_config_with`]).
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        Self::from_config_with(config, &config.memory_store())
    }
}

impl<St: Store> Engine<St> {
    /// Applies `default` to every route without its own limits. Trusts no proxy, counts leases by
    /// client IP (IPv6 by /64), renders the default header style.
    pub fn new(default: Limits<St>) -> Self {
        Self {
            default,
            routes: Vec::new(),
            patterns: matchit::Router::new(),
            resolver: ClientIpResolver::new(),
            lease_key: KeyKind::ip(),
            headers: HeaderOptions::default(),
            lease_refusals: Arc::default(),
        }
    }

    /// The engine `config` describes, its policies on clones of `store` (e.g. a Redis store):
    /// `[[routes]]` and `[[websocket]]` entries become per-route [`Limits`] (see
    /// [`Config::route_limits_with`]), `trusted_proxies` and `forwarding_headers` the
    /// client-address resolver, `headers` the header style. Routes not in the configuration are
    /// not limited.
    pub fn from_config_with(config: &Config, store: &St) -> Result<Self, Error>
    where
        St: Clone,
    {
        Ok(Self::from_route_limits(config, config.route_limits_with(store)?))
    }

    /// [`Engine::from_config_with`], the concurrency leases (in-flight requests, WebSocket
    /// connections) counted in `leases` and shared by every instance using it (e.g. the same
    /// Redis store: `concurrent_per_key = 3` then means 3 across all instances). See
    /// [`RouteLimits::share_leases`].
    pub fn from_config_with_leases<L: LeaseStore + Clone>(
        config: &Config,
        store: &St,
        leases: &L,
    ) -> Result<Self, Error>
    where
        St: Clone,
    {
        let routes = config.route_limits_with(store)?.into_iter().map(|r| r.share_leases(leases));
        Ok(Self::from_route_limits(config, routes))
    }

    /// The engine applying `routes` (e.g. [`Config::route_limits_with`]'s, adjusted), with
    /// `config`'s client-address resolver and header style, and no default limits.
    pub fn from_route_limits(config: &Config, routes: impl IntoIterator<Item = RouteLimits<St>>) -> Self {
        let mut engine =
            Engine::new(Limits::empty()).client_ip_resolver(config.client_ip_resolver()).headers(config.headers);
        for route in routes {
            let path = route.path.clone();
            let methods = route.methods.clone();
            engine = engine.route_methods(&path, methods, Limits::from(route));
        }
        engine
    }

    /// Applies `limits` instead of the default ones to the route `path` (see [the pattern
    /// syntax](self#route-patterns)), whatever the method.
    #[must_use]
    pub fn route(self, path: &str, limits: Limits<St>) -> Self {
        self.route_methods(path, [], limits)
    }

    /// As [`Engine::route`], for requests with one of `methods` only (all when empty). A HEAD
    /// request takes the limits of its path's GET when no entry names HEAD, as the GET handler
    /// serves it. Entries are tried in the order added.
    #[must_use]
    pub fn route_methods(mut self, path: &str, methods: impl IntoIterator<Item = Method>, limits: Limits<St>) -> Self {
        // A pattern seen before (the same route, other methods) is already there; one the
        // matcher rejects (it conflicts with another) still matches by a reported route. A name
        // without a leading `/` is no URI pattern.
        if path.starts_with('/')
            && let Err(err) = self.patterns.insert(path, path.into())
            && !self.routes.iter().any(|r| *r.path == *path)
        {
            tracing::warn!(route = path, error = %err, "tollgate: this route matches only a route the adapter reports");
        }
        self.routes.push(RouteEntry { path: path.into(), methods: methods.into_iter().collect(), limits });
        self
    }

    /// Resolves the client address with `resolver` (trusted proxies, forwarding headers read).
    #[must_use]
    pub fn client_ip_resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// What concurrency leases (in-flight requests, WebSocket connections) and per-key WebSocket
    /// message limits are counted by on routes that do not say ([`Limits::lease_key`],
    /// [`WebSocketLimits::key`]; routes from a configuration always do). Default: the client IP,
    /// IPv6 by /64.
    #[must_use]
    pub fn lease_key(mut self, key: KeyKind) -> Self {
        self.lease_key = key;
        self
    }

    /// Which headers and body style decisions render to.
    #[must_use]
    pub fn headers(mut self, headers: HeaderOptions) -> Self {
        self.headers = headers;
        self
    }

    /// Every route's limits with its pattern, the default limits first (without one).
    pub(crate) fn all_limits(&self) -> impl Iterator<Item = (Option<&str>, &Limits<St>)> {
        std::iter::once((None, &self.default)).chain(self.routes.iter().map(|r| (Some(&*r.path), &r.limits)))
    }

    /// Every route entry's pattern and methods (all when empty), in order.
    pub(crate) fn route_entries(&self) -> impl Iterator<Item = (&str, &[Method])> {
        self.routes.iter().map(|r| (&*r.path, &r.methods[..]))
    }

    /// The client-address resolver.
    pub fn resolver(&self) -> &ClientIpResolver {
        &self.resolver
    }

    /// The header style.
    pub fn header_options(&self) -> &HeaderOptions {
        &self.headers
    }

    /// The limits of the request's route, or the default ones.
    #[inline]
    pub fn limits_for<R: RequestView + ?Sized>(&self, request: &R) -> &Limits<St> {
        if self.routes.is_empty() {
            return &self.default;
        }
        let uri = request.path();
        let path = self.route_of(request).unwrap_or(uri);
        let method = request.method();
        let entry = |method: &str| {
            self.routes
                .iter()
                .find(|r| *r.path == *path && (r.methods.is_empty() || r.methods.iter().any(|m| m.as_str() == method)))
        };
        // A HEAD no entry names is a GET without its body (RFC 9110 §9.3.2; routers answer it
        // with the GET handler): it takes the GET limits, or it would run that handler unlimited.
        entry(method)
            .or_else(|| if method == Method::HEAD.as_str() { entry(Method::GET.as_str()) } else { None })
            .map_or(&self.default, |r| &r.limits)
    }

    /// The route a request is on: the route the adapter reports, else the most specific of the
    /// routes' patterns its path matches (see [`Engine::match_path`]).
    #[inline]
    pub fn route_of<'a, R: RequestView + ?Sized>(&'a self, request: &'a R) -> Option<&'a str> {
        request.matched_route().or_else(|| self.match_path(request.path()))
    }

    /// The most specific route pattern `path` matches, read as every router reads it, so that no
    /// spelling of a path a router serves escapes its route's limits: percent-encoded bytes are
    /// decoded (`/%6Cogin` is `/login`, as actix-web routes it; an encoded `/` stays one segment)
    /// and one trailing `/` is dropped when the path matches no pattern with it (`/login/` is
    /// `/login`, as warp serves it).
    #[inline]
    pub fn match_path(&self, path: &str) -> Option<&str> {
        let found = |path: &str| self.patterns.at(path).ok().map(|m| &**m.value);
        if !path.as_bytes().contains(&b'%') && !path.ends_with('/') {
            return found(path);
        }
        self.match_spelled(path, found)
    }

    /// [`Engine::match_path`] of a path with percent-encoding or a trailing `/`: out of line.
    #[inline(never)]
    fn match_spelled<'a>(&'a self, path: &str, found: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
        let decoded = percent_decoded(path);
        found(&decoded).or_else(|| {
            let trimmed = decoded.strip_suffix('/').filter(|p| !p.is_empty())?;
            found(trimmed)
        })
    }

    /// The keys the checks of `limits` read of `request`, and nothing else: each is a lookup the
    /// adapter need not pay for when no limit reads it.
    #[inline(always)]
    pub fn keys<'a, R: RequestView + ?Sized>(&'a self, limits: &Limits<St>, request: &'a R) -> RequestKeys<'a> {
        RequestKeys::from_view(&self.resolver, request, limits.fields(&self.lease_key), || self.route_of(request))
    }

    /// Every check of the request's `limits` (from [`Engine::limits_for`]), in order, on stores
    /// that decide at once ([`Limits::decides_at_once`]): the plan, with nothing boxed on the
    /// allow path. A store that says it decides at once and then does not (a broken `Store`)
    /// gets a 500. Inlined into the adapter's request path, where the allow path then moves
    /// nothing through a returned `Result` (about 70 instructions per request, measured).
    #[inline(always)]
    pub fn check_now<R: RequestView + ?Sized>(&self, limits: &Limits<St>, request: &R) -> Result<Admit, Box<Refusal>> {
        let keys = self.keys(limits, request);
        let refuse = |decision: Decision| self.refusal(decision);
        let headers = self.headers.writes_limit();
        // The body's size first: a 413 or 411 from it spends nothing.
        let body = self.body_cost(limits, request)?;
        let mut allowed = None;
        if let Some(policy) = &limits.policy {
            allowed = Some(self.verdict(policy.try_admit_now(&keys, 1, headers, refuse))?);
        }
        let mut body_bytes = None;
        match body {
            None => {}
            Some(BodyBytes::Now(policy, cost)) => {
                let bytes = self.bytes_verdict(policy.try_admit_now(&keys, cost, headers, refuse))?;
                allowed = Some(both(allowed, bytes));
            }
            Some(BodyBytes::WhileStreaming(policy)) => body_bytes = Some(BodyCharge::new(policy, &keys, self.headers)),
        }
        let leases = self.leases(limits, &keys, allowed.as_ref())?;
        let (response, wait) = ResponsePlan::new(self.headers, allowed, leases);
        Ok(Admit { wait, max_body: limits.max_body, body_bytes, response })
    }

    /// [`Engine::check_now`] for stores with I/O (and any other): the policies are checked
    /// through their stores' futures, the leases may come from a shared lease store.
    pub async fn check<R: RequestView + Sync + ?Sized>(
        &self,
        limits: &Limits<St>,
        request: &R,
    ) -> Result<Admit, Box<Refusal>> {
        let keys = self.keys(limits, request);
        let refuse = |decision: Decision| self.refusal(decision);
        let headers = self.headers.writes_limit();
        let body = self.body_cost(limits, request)?;
        let mut allowed = None;
        if let Some(policy) = &limits.policy {
            allowed = Some(self.verdict(Some(policy.admit(&keys, 1, headers, refuse).await))?);
        }
        let mut body_bytes = None;
        match body {
            None => {}
            Some(BodyBytes::Now(policy, cost)) => {
                let bytes = self.bytes_verdict(Some(policy.admit(&keys, cost, headers, refuse).await))?;
                allowed = Some(both(allowed, bytes));
            }
            Some(BodyBytes::WhileStreaming(policy)) => body_bytes = Some(BodyCharge::new(policy, &keys, self.headers)),
        }
        let leases = self.acquire_leases(limits, &keys, allowed.as_ref()).await?;
        let (response, wait) = ResponsePlan::new(self.headers, allowed, leases);
        Ok(Admit { wait, max_body: limits.max_body, body_bytes, response })
    }

    /// What an admitted request leaves for the response, or its refusal. `None` is a store that
    /// said it decides at once and then did not: a broken `Store` implementation.
    #[inline(always)]
    fn verdict(&self, answer: Answer) -> Result<Admitted, Box<Refusal>> {
        match answer {
            Some(Ok(Admission::Admitted(admitted))) => Ok(admitted),
            Some(Ok(Admission::Refused(refusal))) => Err(refusal),
            Some(Err(err)) => Err(self.failure(&err)),
            None => Err(self.stopped()),
        }
    }

    /// [`Engine::verdict`] for the body-bytes policy (413 for a body larger than the byte limit
    /// can ever admit at once).
    fn bytes_verdict(&self, answer: Answer) -> Result<Admitted, Box<Refusal>> {
        match answer {
            Some(Err(Error::InvalidCost { capacity, .. })) => {
                Err(Box::new(Refusal::body_too_large(&self.headers, capacity)))
            }
            other => self.verdict(other),
        }
    }

    /// The refusal of a refused decision, out of the allow path.
    #[inline(never)]
    fn refusal(&self, decision: Decision) -> Box<Refusal> {
        let status = decision.status();
        Box::new(Refusal::of(&self.headers, decision, status))
    }

    /// An answer without a decision (411, 413, 500).
    #[inline(never)]
    fn error(&self, status: StatusCode, error: &'static str, limit: Option<u64>) -> Box<Refusal> {
        Box::new(Refusal::error(&self.headers, status, error, limit))
    }

    /// The answer when the store stopped deciding at once.
    #[cold]
    fn stopped(&self) -> Box<Refusal> {
        self.failure(&Error::Store(StoreError::Protocol("the store stopped deciding at once".into())))
    }

    /// The answer to a check that failed, out of the allow path.
    #[inline(never)]
    fn failure(&self, err: &Error) -> Box<Refusal> {
        tracing::error!(error = %err, "rate limit check failed");
        self.error(StatusCode::INTERNAL_SERVER_ERROR, "rate_limit_error", None)
    }

    /// The route's body checks: nothing for a route without body limits (decided inline), else
    /// [`Engine::body_limits`].
    #[inline(always)]
    fn body_cost<'l, R: RequestView + ?Sized>(
        &self,
        limits: &'l Limits<St>,
        request: &R,
    ) -> Result<Option<BodyBytes<'l, St>>, Box<Refusal>> {
        if limits.max_body.is_none() && limits.body_bytes.is_none() {
            return Ok(None);
        }
        self.body_limits(limits, request)
    }

    /// 413 from the body's length over the route's largest body; else the body-bytes policy and
    /// the body's cost when the route has one. The length is the `Content-Length`; else what the
    /// body says of itself ([`RequestView::exact_body_len`]); else 0 for an HTTP/1 request
    /// without `Transfer-Encoding`, which has no body (RFC 9112 §6.3: most GETs). Of unknown
    /// length, the body is charged as it streams where the adapter counts it
    /// ([`RequestView::counts_body`]), else the route's largest body, else it gets 411.
    fn body_limits<'l, R: RequestView + ?Sized>(
        &self,
        limits: &'l Limits<St>,
        request: &R,
    ) -> Result<Option<BodyBytes<'l, St>>, Box<Refusal>> {
        let headers = request.headers();
        let declared = headers
            .first(&CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
        let http1_without_body = request.is_http1() && headers.first(&TRANSFER_ENCODING).is_none();
        let length = declared.or_else(|| request.exact_body_len()).or(http1_without_body.then_some(0));
        if let (Some(max), Some(len)) = (limits.max_body, length)
            && len > max
        {
            return Err(Box::new(Refusal::body_too_large(&self.headers, max)));
        }
        let Some(policy) = &limits.body_bytes else { return Ok(None) };
        if length.is_none() && request.counts_body() {
            // What the body turns out to be, not a guess: nothing for an HTTP/2 GET.
            return Ok(Some(BodyBytes::WhileStreaming(policy)));
        }
        let Some(cost) = length.or(limits.max_body) else {
            return Err(self.error(StatusCode::LENGTH_REQUIRED, "length_required", None));
        };
        Ok((cost > 0).then(|| BodyBytes::Now(policy, u32::try_from(cost).unwrap_or(u32::MAX))))
    }

    /// The limiters a route's leases come from, each with the key it counts by
    /// ([`Limits::lease_keys`]).
    fn lease_plan<'l, 'k>(&'l self, limits: &'l Limits<St>, keys: &RequestKeys<'k>) -> LeasePlan<'l, 'k> {
        let (in_flight_key, websocket_key) = limits.lease_keys(&self.lease_key);
        let in_flight =
            limits.in_flight.as_ref().zip(in_flight_key).map(|(limiter, kind)| (limiter, lease_key(kind, keys)));
        let websocket = limits.websocket.as_ref().zip(websocket_key).map(|(ws, kind)| (ws, lease_key(kind, keys)));
        (in_flight, websocket)
    }

    /// The in-flight lease and the WebSocket connection lease the route asks for (see
    /// [`Engine::lease_plan`]), on limiters that count in this process; a route without
    /// concurrency limits is decided inline.
    /// `allowed` is the policies' admission: the application is called after its wait, and the
    /// leases' latencies count from then.
    #[inline(always)]
    fn leases(
        &self,
        limits: &Limits<St>,
        keys: &RequestKeys<'_>,
        allowed: Option<&Admitted>,
    ) -> Result<Option<Box<Leases>>, Box<Refusal>> {
        if !limits.takes_leases() {
            return Ok(None);
        }
        self.take_leases(limits, keys, allowed)
    }

    fn take_leases(
        &self,
        limits: &Limits<St>,
        keys: &RequestKeys<'_>,
        allowed: Option<&Admitted>,
    ) -> Result<Option<Box<Leases>>, Box<Refusal>> {
        let (in_flight, websocket) = self.lease_plan(limits, keys);
        let refuse = |denied, key| self.concurrency_refusal(&denied, key);
        let lease = match in_flight {
            Some((limiter, key)) => Some(limiter.try_acquire(key).map_err(|d| refuse(d, key))?),
            None => None,
        };
        let upgrade = match websocket {
            Some((ws, key)) => {
                Some(upgrade_lease(ws, ws.connections.try_acquire(key).map_err(|d| refuse(d, key))?, key))
            }
            None => None,
        };
        Ok(delayed(Leases::boxed(lease, upgrade), allowed))
    }

    /// [`Engine::leases`] for stores with I/O: the limiters may count in a shared lease store.
    async fn acquire_leases(
        &self,
        limits: &Limits<St>,
        keys: &RequestKeys<'_>,
        allowed: Option<&Admitted>,
    ) -> Result<Option<Box<Leases>>, Box<Refusal>> {
        if !limits.takes_leases() {
            return Ok(None);
        }
        let (in_flight, websocket) = self.lease_plan(limits, keys);
        let refuse = |denied, key| self.concurrency_refusal(&denied, key);
        let lease = match in_flight {
            Some((limiter, key)) => Some(limiter.acquire(key).await.map_err(|d| refuse(d, key))?),
            None => None,
        };
        let upgrade = match websocket {
            Some((ws, key)) => {
                Some(upgrade_lease(ws, ws.connections.acquire(key).await.map_err(|d| refuse(d, key))?, key))
            }
            None => None,
        };
        Ok(delayed(Leases::boxed(lease, upgrade), allowed))
    }

    /// 429 when the key holds its maximum, 503 when the global or adaptive cap is full or the
    /// shared lease store failed closed; rendered as a refusal (`Retry-After: 1`), counted
    /// against `key`.
    fn concurrency_refusal(&self, denied: &ConcurrencyDenied, key: Key<'_>) -> Box<Refusal> {
        self.count_lease_refusal(denied, key);
        Box::new(Refusal::of(&self.headers, denied.decision(), denied.status()))
    }
}

impl<St: Store + Clone> Engine<St> {
    /// This engine deciding on the state of `previous`'s limits, as a new configuration takes
    /// over from a running one ([`LiveEngine`](crate::live::LiveEngine) does this on every
    /// reload): each policy takes over the state of `previous`'s policy of the same name (see
    /// [`Policy::keeping_state_of`]: a limit whose name, key and algorithm did not change keeps
    /// its counters and penalty blocks, and applies its new quota from the next decision), each
    /// concurrency limiter the places held under `previous`'s limiter of the same name
    /// ([`ConcurrencyLimiter::keeping_counts_of`]), each WebSocket route the per-key message
    /// state of `previous`'s route of the same pattern
    /// ([`MessageLimits::keeping_state_of`](crate::websocket::MessageLimits::keeping_state_of)).
    /// What only `previous` holds is released when `previous` is dropped, once the requests it
    /// admitted are done (their leases hold what they need).
    ///
    /// ```
    /// use tollgate::config::Config;
    /// use tollgate::engine::Engine;
    /// use tollgate::MemoryStore;
    ///
    /// let config = |quota: &str| -> Config {
    ///     format!("[policies.api]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\", algorithm = \"fixed_window\" }}]\n\
    ///              [[routes]]\npath = \"/api\"\npolicy = \"api\"").parse().unwrap()
    /// };
    /// let store = MemoryStore::default();
    /// let old = Engine::from_config_with(&config("10/min"), &store)?;
    /// let new = Engine::from_config_with(&config("5/min"), &store)?.keeping_state_of(&old);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[must_use]
    pub fn keeping_state_of(mut self, previous: &Engine<St>) -> Self {
        let mut carry = carry::Carry::of(previous.all_limits());
        self.default = carry.limits(&self.default, None);
        for route in &mut self.routes {
            route.limits = carry.limits(&route.limits, Some(&route.path));
        }
        self
    }
}

/// `path` with its percent-encoded bytes decoded, except those that would change its segments or
/// its encoding (`%2F` `/`, `%25` `%`), as actix-web's router decodes it; as it is when it has
/// nothing to decode or decodes to bytes that are not text.
fn percent_decoded(path: &str) -> std::borrow::Cow<'_, str> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (Some(h), Some(l)) if bytes[i] == b'%' => {
                u8::try_from(h * 16 + l).ok().filter(|b| !matches!(b, b'/' | b'%'))
            }
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_or(std::borrow::Cow::Borrowed(path), std::borrow::Cow::Owned)
}

/// How a request's body bytes are charged: its length now, or each part as the adapter reads it
/// ([`BodyCharge`]).
enum BodyBytes<'l, St: Store> {
    Now(&'l Policy<St>, u32),
    WhileStreaming(&'l Policy<St>),
}

/// A policy's answer on the way to the plan: what an admitted request leaves for the response,
/// or the refusal.
type Answer = Option<Result<Admission<Box<Refusal>>, Error>>;

/// The limiters a route's leases come from, each with the key it counts by.
type LeasePlan<'l, 'k> = (Option<(&'l ConcurrencyLimiter, Key<'k>)>, Option<(&'l WebSocketLimits, Key<'k>)>);

/// The request policy's and the body-bytes policy's admissions together: the longer wait, and
/// the headers of the binding limit — the one with the least headroom left (remaining over
/// limit), as a policy reports the tightest of its own limits — so that a client reading
/// `X-RateLimit-Remaining` sees what runs out first, whether requests or bytes. A tie keeps
/// the request policy's.
#[inline]
fn both(request: Option<Admitted>, bytes: Admitted) -> Admitted {
    let Some(mut admitted) = request else { return bytes };
    admitted.wait = admitted.wait.max(bytes.wait);
    if let Some(tight) = bytes.headers
        && admitted.headers.is_none_or(|loose| less_headroom(&tight, &loose))
    {
        admitted.headers = Some(tight);
    }
    admitted
}

/// Whether `a` has less of its capacity left than `b`: `a.remaining / a.limit <
/// b.remaining / b.limit`, compared exactly (cross-multiplied, in `u128`), a limit of 0 having
/// none left.
fn less_headroom(a: &crate::decision::LimitHeaders, b: &crate::decision::LimitHeaders) -> bool {
    let share = |h: &crate::decision::LimitHeaders| if h.limit == 0 { (0, 1) } else { (h.remaining, h.limit) };
    let ((a_left, a_limit), (b_left, b_limit)) = (share(a), share(b));
    u128::from(a_left) * u128::from(b_limit) < u128::from(b_left) * u128::from(a_limit)
}

/// `leases`, their latencies counted from when the application is called: after the wait of the
/// policies' admission `allowed` (the delay action).
fn delayed(mut leases: Option<Box<Leases>>, allowed: Option<&Admitted>) -> Option<Box<Leases>> {
    if let (Some(leases), Some(allowed)) = (&mut leases, allowed)
        && !allowed.wait.is_zero()
    {
        leases.delayed(allowed.wait);
    }
    leases
}

/// The upgraded socket's share of a WebSocket connection lease: the lease, the route's message
/// limits and the key its per-key message limits count by; with the lease's adaptive latency
/// sample apart, as the sample ends with the upgrade's response and the lease with the socket.
fn upgrade_lease(
    ws: &WebSocketLimits,
    mut lease: ConnectionLease,
    key: Key<'_>,
) -> (UpgradeLease, Option<LatencySample>) {
    let sample = lease.take_sample();
    (UpgradeLease::new(lease, Arc::clone(&ws.messages), key.to_owned_key()), sample)
}

/// The key a lease of `kind` is counted by; requests without one share a key (as a policy's
/// `MissingKey::Shared`), so leaving it out cannot dodge the limit.
fn lease_key<'a>(kind: &KeyKind, keys: &RequestKeys<'a>) -> Key<'a> {
    kind.resolve(keys).unwrap_or(Key::Text("\u{0}missing"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::IpAddr;
    use std::time::Duration;

    use http::HeaderMap;

    use super::*;
    use crate::request::RequestHeaders;
    use crate::{Limit, OnExceed};

    /// A `POST /echo` declaring a body of `length` bytes.
    struct Post {
        headers: HeaderMap,
    }

    impl Post {
        fn of(length: u64) -> Self {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_LENGTH, length.into());
            Post { headers }
        }
    }

    impl RequestView for Post {
        fn method(&self) -> &str {
            "POST"
        }
        fn path(&self) -> &str {
            "/echo"
        }
        fn peer_ip(&self) -> Option<IpAddr> {
            "192.0.2.1".parse().ok()
        }
        fn headers(&self) -> &(dyn RequestHeaders + Sync) {
            &self.headers
        }
        fn is_http1(&self) -> bool {
            true
        }
    }

    /// The `X-RateLimit-Limit` and `X-RateLimit-Remaining` an admitted `request` gets.
    fn shown(engine: &Engine, request: &Post) -> (String, String) {
        let admit = engine.check_now(engine.limits_for(request), request).expect("admitted");
        let mut headers = HeaderMap::new();
        let _no_lease = admit.response.apply(StatusCode::OK, &mut headers);
        let text = |name: &str| headers[name].to_str().unwrap().to_owned();
        (text("x-ratelimit-limit"), text("x-ratelimit-remaining"))
    }

    #[test]
    fn a_route_with_requests_and_body_bytes_shows_the_limit_with_least_headroom() {
        let per_ip = |name: &str, quota: &str| {
            Policy::builder(name).limit(Limit::new(name, quota.parse().unwrap()).key(KeyKind::ip())).build().unwrap()
        };
        let engine = Engine::new(Limits::new())
            .route("/echo", Limits::new().policy(per_ip("requests", "20/min")).body_bytes(per_ip("bytes", "1000/min")));
        // 100 bytes: 9/10 of the bytes left, 19/20 of the requests: the bytes bind.
        assert_eq!(shown(&engine, &Post::of(100)), ("1000".into(), "900".into()));
        // No body, no bytes spent: the requests, the only limit that applied.
        assert_eq!(shown(&engine, &Post::of(0)), ("20".into(), "18".into()));
        assert_eq!(shown(&engine, &Post::of(0)), ("20".into(), "17".into()));
        // 1 byte: 899/1000 of the bytes, 16/20 of the requests: the requests bind.
        assert_eq!(shown(&engine, &Post::of(1)), ("20".into(), "16".into()));
        // 600 bytes: 299/1000 of the bytes, 15/20 of the requests: the bytes again.
        assert_eq!(shown(&engine, &Post::of(600)), ("1000".into(), "299".into()));
    }

    #[test]
    fn a_delayed_request_s_latency_counts_from_when_it_goes() {
        let clock = crate::ManualClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let delayed = Policy::builder("delayed")
            .limit(
                Limit::new("one_per_second", "1/s".parse().unwrap())
                    .key(KeyKind::ip())
                    .on_exceed(OnExceed::Delay { max_wait: Duration::from_secs(5) }),
            )
            .build_with(store)
            .unwrap();
        let adaptive = crate::AdaptiveLimit::aimd(Duration::from_millis(500))
            .initial(10)
            .window(Duration::from_nanos(1))
            .min_samples(1)
            .clock(clock.clone())
            .build()
            .unwrap();
        let limits =
            Limits::empty().policy(delayed).in_flight(ConcurrencyLimiter::new("work").adaptive(adaptive.clone()));
        let engine = Engine::new(limits);
        let first = engine.check_now(engine.limits_for(&Post::of(0)), &Post::of(0)).unwrap();
        assert_eq!(first.wait, Duration::ZERO);
        clock.advance(Duration::from_millis(100));
        drop(first.response.apply(StatusCode::OK, &mut HeaderMap::new()));
        assert_eq!(adaptive.latency(), Some(Duration::from_millis(100)));
        // The second waits 900 ms for its turn, then its application takes 100 ms: a latency of
        // 100 ms, not 1 s (which would be over the threshold of 500 ms and back the cap off).
        let second = engine.check_now(engine.limits_for(&Post::of(0)), &Post::of(0)).unwrap();
        assert_eq!(second.wait, Duration::from_millis(900));
        clock.advance(Duration::from_millis(1_000));
        drop(second.response.apply(StatusCode::OK, &mut HeaderMap::new()));
        assert_eq!(adaptive.latency(), Some(Duration::from_millis(100)));
        assert_eq!(adaptive.current(), 10);
    }

    #[test]
    fn headroom_compares_shares_not_amounts() {
        let headers = |limit, remaining| {
            let snapshot = crate::Snapshot { limit, remaining, ..crate::Snapshot::EMPTY };
            crate::decision::LimitHeaders::of("l", "1/s".parse().unwrap(), &snapshot)
        };
        assert!(less_headroom(&headers(1_000_000, 899_999), &headers(10, 9)), "0.899999 < 0.9");
        assert!(!less_headroom(&headers(10, 9), &headers(1_000_000, 900_000)), "a tie is not less");
        assert!(less_headroom(&headers(0, 0), &headers(10, 1)), "a limit of 0 has nothing left");
        assert!(!less_headroom(&headers(u64::MAX, u64::MAX), &headers(u64::MAX, u64::MAX - 1)), "no overflow");
    }
}
