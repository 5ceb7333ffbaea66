//! Configuration of the middleware.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tollgate::websocket::MessageLimits;
use tollgate::{
    ClientIpResolver, ConcurrencyLimiter, Decision, HeaderOptions, KeyFields, KeyKind, MemoryStore, Policy, Store,
};
use tower::Layer;

#[cfg(feature = "axum")]
use super::bodies::AxumBody;
use super::bodies::Wrapped;
use super::service::RateLimit;
use crate::keys::{KeyExtractor, route};

/// Builds a custom refusal from the decision and the default response (status, rate-limit
/// headers and JSON body already set): return it as is, changed, or replaced.
pub type RefusalHook = Arc<dyn Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync>;

/// The limits applied to one route (or to every route without its own).
pub struct Limits<St: Store = MemoryStore> {
    pub(crate) policy: Option<Policy<St>>,
    pub(crate) max_body: Option<u64>,
    pub(crate) body_bytes: Option<Policy<St>>,
    pub(crate) in_flight: Option<ConcurrencyLimiter>,
    pub(crate) lease_key: Option<KeyKind>,
    pub(crate) websocket: Option<WebSocketLimits>,
    /// Every policy's store and every concurrency limiter decides without I/O: the checks run
    /// inside `call`, nothing boxed.
    pub(crate) at_once: bool,
    /// What the policies' checks read of a request (the lease keys are added per request, see
    /// [`Limits::fields`]).
    pub(crate) policy_fields: KeyFields,
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
    /// the route's [`Limits::lease_key`] or the layer's [`RateLimitLayer::lease_key`].
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
    /// handler runs, or while the body is read (the handler's body extraction fails with
    /// `http_body_util::LengthLimitError`, which axum answers with 413).
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

    /// Whether everything decides without I/O: then the checks run inside `call`; else (a
    /// remote store, a [shared](ConcurrencyLimiter::shared) limiter) in a boxed future. And what
    /// the policies read of a request, so that only that is taken from it.
    fn refresh(&mut self) {
        let limiters = self.in_flight.iter().chain(self.websocket.as_ref().map(|ws| &ws.connections));
        self.at_once = self.policy.iter().chain(&self.body_bytes).all(Policy::decides_at_once)
            && limiters.into_iter().all(ConcurrencyLimiter::decides_at_once);
        self.policy_fields =
            self.policy.iter().chain(&self.body_bytes).fold(KeyFields::NONE, |f, p| f.union(p.fields()));
    }

    /// What the in-flight lease and the WebSocket connection lease (when the route takes them)
    /// are counted by: the WebSocket limits' key, else the route's lease key, else
    /// `layer_lease_key`, the layer's.
    #[inline]
    pub(crate) fn lease_keys<'a>(&'a self, layer_lease_key: &'a KeyKind) -> (Option<&'a KeyKind>, Option<&'a KeyKind>) {
        let route_key = self.lease_key.as_ref().unwrap_or(layer_lease_key);
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
    pub(crate) fn fields(&self, layer_lease_key: &KeyKind) -> KeyFields {
        if !self.takes_leases() {
            return self.policy_fields;
        }
        let (in_flight, websocket) = self.lease_keys(layer_lease_key);
        [in_flight, websocket].into_iter().flatten().fold(self.policy_fields, |f, k| f.union(k.fields()))
    }

    /// Counts this route's concurrency leases — in-flight requests, and WebSocket connections
    /// unless [`WebSocketLimits::key`] says otherwise — by `key` instead of the layer's
    /// [`RateLimitLayer::lease_key`].
    #[must_use]
    pub fn lease_key(mut self, key: KeyKind) -> Self {
        self.lease_key = Some(key);
        self
    }

    /// WebSocket upgrades: see [`WebSocketLimits`] and [`crate::UpgradeLease`].
    #[must_use]
    pub fn websocket(mut self, limits: WebSocketLimits) -> Self {
        self.websocket = Some(limits);
        self.refresh();
        self
    }
}

/// Applies [`Limits`] to requests: see the [module docs](crate::rate_limit). `M` says how bodies
/// are passed on ([`Bodies`](super::Bodies); see [`RateLimitLayer::axum_body`]).
pub struct RateLimitLayer<St: Store = MemoryStore, M = Wrapped> {
    pub(crate) config: Arc<Config<St>>,
    bodies: PhantomData<fn() -> M>,
}

pub(crate) struct Config<St: Store> {
    pub(crate) default: Limits<St>,
    pub(crate) routes: Vec<RouteEntry<St>>,
    /// The routes' patterns, each mapped to itself: which one a URI's path matches where no
    /// router says (the layer around a `Router`, before routing; plain hyper).
    pub(crate) patterns: matchit::Router<Box<str>>,
    pub(crate) keys: KeyExtractor,
    pub(crate) lease_key: KeyKind,
    pub(crate) headers: HeaderOptions,
    pub(crate) refusal: Option<RefusalHook>,
}

pub(crate) struct RouteEntry<St: Store> {
    pub(crate) path: Box<str>,
    pub(crate) methods: Vec<Method>,
    pub(crate) limits: Limits<St>,
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

impl<St: Store> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self {
            default: self.default.clone(),
            routes: self.routes.clone(),
            patterns: self.patterns.clone(),
            keys: self.keys.clone(),
            lease_key: self.lease_key.clone(),
            headers: self.headers,
            refusal: self.refusal.clone(),
        }
    }
}

impl<St: Store, M> Clone for RateLimitLayer<St, M> {
    fn clone(&self) -> Self {
        Self { config: Arc::clone(&self.config), bodies: PhantomData }
    }
}

impl<St: Store, M> fmt::Debug for RateLimitLayer<St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.config;
        f.debug_struct("RateLimitLayer")
            .field("default", &c.default)
            .field("routes", &c.routes)
            .field("keys", &c.keys)
            .field("lease_key", &c.lease_key)
            .field("headers", &c.headers)
            .field("refusal", &c.refusal.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl<St: Store> RateLimitLayer<St> {
    /// Each request costs 1 against `policy`.
    pub fn new(policy: Policy<St>) -> Self {
        Self::with_limits(Limits::empty().policy(policy))
    }

    /// Applies `limits` to every route without its own.
    pub fn with_limits(limits: Limits<St>) -> Self {
        Self {
            config: Arc::new(Config {
                default: limits,
                routes: Vec::new(),
                patterns: matchit::Router::new(),
                keys: KeyExtractor::new(),
                lease_key: KeyKind::ip(),
                headers: HeaderOptions::default(),
                refusal: None,
            }),
            bodies: PhantomData,
        }
    }
}

impl<St: Store, M> RateLimitLayer<St, M> {
    /// Passes axum's `Body` on as it is, in and out, instead of in the middleware's own body types:
    /// a body is wrapped only on a route with a largest body (the request's) or an in-flight
    /// limit (the response's). Inside an axum `Router` that saves the two allocations axum makes
    /// to box a body type of another kind. Needs the inner service to take and return
    /// `axum::body::Body`, as the `Router` does.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use tollgate::{KeyKind, Limit, Policy};
    /// use tollgate_tower::RateLimitLayer;
    ///
    /// let policy = Policy::builder("api").limit(Limit::new("per_ip", "10/s".parse()?).key(KeyKind::ip())).build()?;
    /// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(RateLimitLayer::new(policy).axum_body());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "axum")]
    #[must_use]
    pub fn axum_body(self) -> RateLimitLayer<St, AxumBody> {
        RateLimitLayer { config: self.config, bodies: PhantomData }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config<St>)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Applies `limits` instead of the default ones to the route `path`, a pattern in axum's syntax
    /// (`/users/{id}`, `/assets/{*rest}`). A request is on the route when axum's matched path (the
    /// layer inside a `Router`, feature `axum`) or a [`crate::RouteName`] is `path`, or else when
    /// `path` is the most specific of the layer's patterns its URI's path matches (the layer
    /// around a `Router`, or without axum; that pattern is then also the request's
    /// [`KeyKind::Route`] key). Inside a `Router`, write `path` as the route is written there.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use tollgate::{KeyKind, Limit, Policy};
    /// use tollgate_tower::{Limits, RateLimitLayer};
    /// use tower::Layer;
    ///
    /// let per_ip = |quota: &str| -> Result<Policy, Box<dyn std::error::Error>> {
    ///     Ok(Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?)
    /// };
    /// let layer = RateLimitLayer::new(per_ip("100/s")?)
    ///     .route("/users/{id}", Limits::new().policy(per_ip("5/s")?));
    /// let app: Router = Router::new().route("/users/{id}", get(|| async { "user" }));
    /// // Around the router: `/users/7` is matched against `/users/{id}` before routing.
    /// let service = layer.layer(app);
    /// # let _ = service;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn route(self, path: &str, limits: Limits<St>) -> Self {
        self.route_methods(path, [], limits)
    }

    /// As [`RateLimitLayer::route`], for requests with one of `methods` only (all when empty). A
    /// HEAD request takes the limits of its path's GET when no entry names HEAD, as the GET
    /// handler serves it.
    #[must_use]
    pub fn route_methods(self, path: &str, methods: impl IntoIterator<Item = Method>, limits: Limits<St>) -> Self {
        let entry = RouteEntry { path: path.into(), methods: methods.into_iter().collect(), limits };
        self.edit(|c| {
            // A pattern seen before (the same route, other methods) is already there; one matchit
            // rejects (it conflicts with another) still matches by the router's matched path. A
            // name without a leading `/` (a `RouteName`) is no URI pattern.
            if path.starts_with('/')
                && let Err(err) = c.patterns.insert(path, path.into())
                && !c.routes.iter().any(|r| *r.path == *path)
            {
                tracing::warn!(route = path, error = %err, "tollgate: this route matches only axum's matched path");
            }
            c.routes.push(entry);
        })
    }

    /// How keys are taken from requests.
    #[must_use]
    pub fn keys(self, keys: KeyExtractor) -> Self {
        self.edit(|c| c.keys = keys)
    }

    /// Trusts the proxies of `resolver` for the client address.
    #[must_use]
    pub fn client_ip_resolver(self, resolver: ClientIpResolver) -> Self {
        self.edit(|c| c.keys = c.keys.clone().client_ip_resolver(resolver))
    }

    /// What concurrency leases (in-flight requests, WebSocket connections) and per-key
    /// WebSocket message limits are counted by on routes that do not say
    /// ([`Limits::lease_key`], [`WebSocketLimits::key`]; routes from a configuration always do).
    /// Default: the client IP, IPv6 by /64.
    #[must_use]
    pub fn lease_key(self, key: KeyKind) -> Self {
        self.edit(|c| c.lease_key = key)
    }

    /// Which headers and body style decisions render to.
    #[must_use]
    pub fn headers(self, headers: HeaderOptions) -> Self {
        self.edit(|c| c.headers = headers)
    }

    /// Builds refusals with `hook` (it gets the default refusal to adjust or replace).
    #[must_use]
    pub fn on_refusal(
        self,
        hook: impl Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        let hook: RefusalHook = Arc::new(hook);
        self.edit(|c| c.refusal = Some(hook))
    }
}

impl<S, St: Store, M> Layer<S> for RateLimitLayer<St, M> {
    type Service = RateLimit<S, St, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_config(inner, Arc::clone(&self.config))
    }
}

impl<St: Store> Config<St> {
    pub(crate) fn limits_for<B>(&self, request: &Request<B>) -> &Limits<St> {
        if self.routes.is_empty() {
            return &self.default;
        }
        let uri = request.uri().path();
        let path = self.route(request.extensions(), uri).unwrap_or(uri);
        let method = request.method();
        let entry = |method: &Method| {
            self.routes.iter().find(|r| *r.path == *path && (r.methods.is_empty() || r.methods.contains(method)))
        };
        // A HEAD no entry names is a GET without its body (RFC 9110 §9.3.2; axum answers it with
        // the GET handler): it takes the GET limits, or it would run that handler unlimited.
        entry(method)
            .or_else(|| if *method == Method::HEAD { entry(&Method::GET) } else { None })
            .map_or(&self.default, |r| &r.limits)
    }

    /// The route a request is on: axum's matched path or a [`crate::RouteName`], else the most
    /// specific of the routes' patterns its URI's path (`uri`) matches.
    pub(crate) fn route<'a>(&'a self, ext: &'a Extensions, uri: &'a str) -> Option<&'a str> {
        route(ext).or_else(|| self.patterns.at(uri).ok().map(|m| &**m.value))
    }

    /// An error response without a decision (411, 413, 500), rendered by the core in the
    /// configured body format.
    pub(crate) fn error(&self, status: StatusCode, error: &str, limit: Option<u64>) -> Response<Full<Bytes>> {
        error_response(&self.headers, status, error, limit)
    }

    /// A refusal rendered by the core, then through the hook.
    pub(crate) fn refusal(&self, decision: &Decision, status: StatusCode) -> Response<Full<Bytes>> {
        let mut response = Response::new(Bytes::new());
        let body = self.headers.refusal(decision, response.headers_mut());
        *response.body_mut() = Bytes::from(body);
        *response.status_mut() = status;
        if let Some(hook) = &self.refusal {
            response = hook(decision, response);
        }
        response.map(Full::new)
    }
}

/// An error response without a decision (411, 413, 500) in the default body format, for where
/// no configuration is at hand.
pub(crate) fn plain_error(status: StatusCode, error: &str, limit: Option<u64>) -> Response<Full<Bytes>> {
    error_response(&HeaderOptions::default(), status, error, limit)
}

fn error_response(
    headers: &HeaderOptions,
    status: StatusCode,
    error: &str,
    limit: Option<u64>,
) -> Response<Full<Bytes>> {
    let (content_type, body) = headers.error_body(status, error, limit);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}
