//! Configuration of the middleware: the core's [`Engine`] and the refusal hook.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use tollgate::engine::{BodyCharge, BodyCounter, Engine, Limits, Refusal};
use tollgate::live::{CurrentEngine, EngineSource};
use tollgate::{ClientIpResolver, Decision, HeaderOptions, KeyKind, MemoryStore, Policy, Store};
use tower::Layer;

#[cfg(feature = "axum")]
use super::bodies::AxumBody;
use super::bodies::Wrapped;
use super::body::{BodyMeter, sleep};
use super::service::RateLimit;
use crate::keys::KeyExtractor;

/// Builds a custom refusal from the decision and the default response (status, rate-limit
/// headers and JSON body already set): return it as is, changed, or replaced.
pub type RefusalHook = Arc<dyn Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync>;

/// Applies [`Limits`] to requests: see the [module docs](crate::rate_limit). `M` says how bodies
/// are passed on ([`Bodies`](super::Bodies); see [`RateLimitLayer::axum_body`]).
pub struct RateLimitLayer<St: Store = MemoryStore, M = Wrapped> {
    pub(crate) config: Arc<Config<St>>,
    bodies: PhantomData<fn() -> M>,
}

/// What the service shares: the core's engine, which decides (fixed, or a live engine's
/// current one), and how refusals are turned into responses.
pub(crate) struct Config<St: Store> {
    pub(crate) engine: EngineSource<St>,
    refusal: Option<RefusalHook>,
}

impl<St: Store> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), refusal: self.refusal.clone() }
    }
}

impl<St: Store, M> Clone for RateLimitLayer<St, M> {
    fn clone(&self) -> Self {
        Self { config: Arc::clone(&self.config), bodies: PhantomData }
    }
}

impl<St: Store, M> fmt::Debug for RateLimitLayer<St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("engine", &self.config.engine)
            .field("refusal", &self.config.refusal.as_ref().map(|_| "custom"))
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
        Self::with_engine(Engine::new(limits))
    }

    /// Applies the decisions of `engine`, as every adapter does: an [`Engine`] (e.g.
    /// [`Engine::from_config`]), or a [`LiveEngine`](tollgate::live::LiveEngine), whose limits can
    /// change while it serves — each request is decided by the engine current when it arrives,
    /// loaded without a lock (see [`tollgate::live`]).
    ///
    /// ```
    /// use tollgate::live::LiveEngine;
    /// use tollgate_tower::RateLimitLayer;
    ///
    /// let live = LiveEngine::from_config("[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"10/s\" }]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"".parse()?)?;
    /// let layer = RateLimitLayer::with_engine(live.clone());
    /// // Later, while serving: the layer decides with the new limits from the next request.
    /// live.set_key_quota("api", "per_ip", "203.0.113.9", Some("100/s".parse()?))?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_engine(engine: impl Into<EngineSource<St>>) -> Self {
        Self { config: Arc::new(Config { engine: engine.into(), refusal: None }), bodies: PhantomData }
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

    /// The engine deciding for this layer now (a live engine's current one).
    pub fn engine(&self) -> CurrentEngine<'_, St> {
        self.config.engine.load_owned()
    }

    fn edit(mut self, f: impl FnOnce(&mut Config<St>)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Changes a fixed engine; a live engine's routes, keys and headers come from its
    /// configuration (see [`EngineSource::edit`]).
    fn edit_engine(self, f: impl FnOnce(Engine<St>) -> Engine<St>) -> Self {
        self.edit(|c| c.engine = c.engine.clone().edit(f))
    }

    /// Applies `limits` instead of the default ones to the route `path`, a pattern in axum's syntax
    /// (`/users/{id}`, `/assets/{*rest}`; see [the core's pattern
    /// syntax](tollgate::engine#route-patterns)). A request is on the route when axum's matched
    /// path (the layer inside a `Router`, feature `axum`) or a [`crate::RouteName`] is `path`, or
    /// else when `path` is the most specific of the layer's patterns its URI's path matches (the
    /// layer around a `Router`, or without axum; that pattern is then also the request's
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
        self.edit_engine(|e| e.route_methods(path, methods, limits))
    }

    /// How keys are taken from requests: the client address through `keys`' trusted proxies.
    #[must_use]
    pub fn keys(self, keys: KeyExtractor) -> Self {
        self.client_ip_resolver(keys.resolver)
    }

    /// Trusts the proxies of `resolver` for the client address.
    #[must_use]
    pub fn client_ip_resolver(self, resolver: ClientIpResolver) -> Self {
        self.edit_engine(|e| e.client_ip_resolver(resolver))
    }

    /// What concurrency leases (in-flight requests, WebSocket connections) and per-key
    /// WebSocket message limits are counted by on routes that do not say
    /// ([`Limits::lease_key`], [`WebSocketLimits::key`](tollgate::engine::WebSocketLimits::key);
    /// routes from a configuration always do). Default: the client IP, IPv6 by /64.
    #[must_use]
    pub fn lease_key(self, key: KeyKind) -> Self {
        self.edit_engine(|e| e.lease_key(key))
    }

    /// Which headers and body style decisions render to.
    #[must_use]
    pub fn headers(self, headers: HeaderOptions) -> Self {
        self.edit_engine(|e| e.headers(headers))
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
    /// The engine's refusal as a response, through the hook when it refused a decision. Out of
    /// the allow path.
    #[inline(never)]
    pub(crate) fn respond(&self, refusal: &Refusal) -> Response<Full<Bytes>> {
        response(refusal, self.refusal.as_ref())
    }

    /// What the request body is counted against while it streams, shared with the response
    /// future: the route's largest body and the body-bytes charge of a body of unknown length.
    /// `None` (nothing allocated) on a route without body limits.
    #[inline(always)]
    pub(crate) fn body_meter(
        &self,
        options: &HeaderOptions,
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
    ) -> Option<Arc<BodyMeter>> {
        if max_body.is_none() && charge.is_none() {
            return None;
        }
        self.new_body_meter(options, max_body, charge)
    }

    #[inline(never)]
    fn new_body_meter(
        &self,
        options: &HeaderOptions,
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
    ) -> Option<Arc<BodyMeter>> {
        let counter = BodyCounter::new(max_body, charge, options, sleep)?;
        Some(Arc::new(BodyMeter::new(counter, self.refusal.clone())))
    }
}

/// An answer without a decision (a 500 when the response future is misused), in the default body
/// format, for where no configuration is at hand.
pub(crate) fn plain_error(error: &'static str) -> Response<Full<Bytes>> {
    let status = http::StatusCode::INTERNAL_SERVER_ERROR;
    response(&Refusal::error(&HeaderOptions::default(), status, error, None), None)
}

/// The engine's refusal as an `http` response, through `hook` when it refused a decision.
pub(crate) fn response(refusal: &Refusal, hook: Option<&RefusalHook>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Bytes::new());
    *response.body_mut() = refusal.render_into(response.headers_mut());
    *response.status_mut() = refusal.status();
    if let (Some(hook), Some(decision)) = (hook, refusal.decision()) {
        response = hook(decision, response);
    }
    response.map(Full::new)
}
