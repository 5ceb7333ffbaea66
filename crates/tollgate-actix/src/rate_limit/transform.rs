//! The middleware's builder: the core's [`Engine`] and the refusal hook, shared by every worker.

use std::fmt;
use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use actix_web::{Error, HttpResponse};
use tollgate::config::{Config as LimitsConfig, RouteLimits};
use tollgate::engine::{Engine, Limits, Refusal};
use tollgate::live::{CurrentEngine, EngineSource};
use tollgate::{ClientIpResolver, Decision, HeaderOptions, KeyKind, LeaseStore, MemoryStore, Policy, Store};

use super::body::ResponseBody;
use super::fields;
use super::service::RateLimitMiddleware;

/// Builds a custom refusal from the decision and the default response (status, `Retry-After`,
/// rate-limit headers and JSON body already set): return it as is, changed, or replaced.
pub type RefusalHook = Arc<dyn Fn(&Decision, HttpResponse) -> HttpResponse + Send + Sync>;

/// The rate-limiting middleware: `App::new().wrap(RateLimit::new(policy))`, or `.wrap` on a
/// `web::scope` or `web::resource`. See the [module docs](crate::rate_limit).
///
/// Build it once, outside `HttpServer::new`'s factory closure, and clone it into the closure: the
/// clones share one engine (and one store), so every worker counts against the same limits.
pub struct RateLimit<St: Store = MemoryStore> {
    pub(crate) config: Arc<Config<St>>,
}

/// What every worker's middleware shares: the core's engine, which decides (fixed, or a live
/// engine's current one), and how refusals are turned into responses.
pub(crate) struct Config<St: Store> {
    pub(crate) engine: EngineSource<St>,
    refusal: Option<RefusalHook>,
}

impl<St: Store> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), refusal: self.refusal.clone() }
    }
}

impl<St: Store> Clone for RateLimit<St> {
    /// Another handle on the same engine and store (the limits are shared, not copied).
    fn clone(&self) -> Self {
        Self { config: Arc::clone(&self.config) }
    }
}

impl<St: Store> fmt::Debug for RateLimit<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("engine", &self.config.engine)
            .field("refusal", &self.config.refusal.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl<St: Store> RateLimit<St> {
    /// Each request costs 1 against `policy`.
    pub fn new(policy: Policy<St>) -> Self {
        Self::with_limits(Limits::empty().policy(policy))
    }

    /// Applies `limits` (request policy, body limits, in-flight requests, WebSocket upgrades) to
    /// every route without its own.
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
    /// use tollgate_actix::RateLimit;
    ///
    /// let live = LiveEngine::from_config("[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"10/s\" }]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"".parse()?)?;
    /// let middleware = RateLimit::with_engine(live.clone());
    /// // Later, while serving: every worker decides with the new limits from the next request.
    /// live.add_denied("api", "198.51.100.0/24")?;
    /// # let _ = middleware;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_engine(engine: impl Into<EngineSource<St>>) -> Self {
        Self { config: Arc::new(Config { engine: engine.into(), refusal: None }) }
    }

    /// The engine deciding for this middleware now (a live engine's current one).
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

    /// Applies `limits` instead of the default ones to the route `path`, a pattern in the core's
    /// syntax (`/users/{id}`, `/files/{*rest}`; see [the pattern
    /// syntax](tollgate::engine#route-patterns)), matched against the request's path by the core
    /// — not actix's own patterns (`{tail}*`), so a route limit means the same on every adapter.
    /// A [`RouteName`](crate::RouteName) in the request extensions is used instead when present.
    #[must_use]
    pub fn route(self, path: &str, limits: Limits<St>) -> Self {
        self.edit_engine(|e| e.route(path, limits))
    }

    /// As [`RateLimit::route`], for requests with one of `methods` only (all when empty). A HEAD
    /// request takes the limits of its path's GET when no entry names HEAD.
    #[must_use]
    pub fn route_methods(self, path: &str, methods: impl IntoIterator<Item = Method>, limits: Limits<St>) -> Self {
        let methods: Vec<http::Method> =
            methods.into_iter().filter_map(|m| http::Method::from_bytes(m.as_str().as_bytes()).ok()).collect();
        self.edit_engine(|e| e.route_methods(path, methods, limits))
    }

    /// Trusts the proxies of `resolver` for the client address (read from `Forwarded`,
    /// `X-Forwarded-For` or `X-Real-IP` only when the peer is one of them).
    #[must_use]
    pub fn client_ip_resolver(self, resolver: ClientIpResolver) -> Self {
        self.edit_engine(|e| e.client_ip_resolver(resolver))
    }

    /// What concurrency leases (in-flight requests, WebSocket connections) and per-key WebSocket
    /// message limits are counted by on routes that do not say. Default: the client IP, IPv6 by
    /// /64.
    #[must_use]
    pub fn lease_key(self, key: KeyKind) -> Self {
        self.edit_engine(|e| e.lease_key(key))
    }

    /// Which headers and body style decisions render to (X-RateLimit, IETF `RateLimit`, Spring's;
    /// on allowed responses or only on refusals).
    #[must_use]
    pub fn headers(self, headers: HeaderOptions) -> Self {
        self.edit_engine(|e| e.headers(headers))
    }

    /// Builds refusals by a limit with `hook`: it gets the decision and the default refusal, to
    /// adjust or replace. The inner service is still not called.
    #[must_use]
    pub fn on_refusal(self, hook: impl Fn(&Decision, HttpResponse) -> HttpResponse + Send + Sync + 'static) -> Self {
        let hook: RefusalHook = Arc::new(hook);
        self.edit(|c| c.refusal = Some(hook))
    }
}

impl RateLimit<MemoryStore> {
    /// The middleware `config` describes, on one in-memory store: `[[routes]]` and
    /// `[[websocket]]` entries become per-route [`Limits`] (see [`Engine::from_config_with`]),
    /// `trusted_proxies` the client-address resolver, `headers` the header style. Routes not in
    /// the configuration are not limited.
    pub fn from_config(config: &LimitsConfig) -> Result<Self, tollgate::Error> {
        Ok(Self::with_engine(Engine::from_config(config)?))
    }
}

impl<St: Store + Clone> RateLimit<St> {
    /// [`RateLimit::from_config`] on clones of `store` (e.g. a `tollgate_redis::RedisStore`, so
    /// that several instances share their limits).
    pub fn from_config_with(config: &LimitsConfig, store: &St) -> Result<Self, tollgate::Error> {
        Ok(Self::with_engine(Engine::from_config_with(config, store)?))
    }

    /// [`RateLimit::from_config_with`], the concurrency leases (in-flight requests, WebSocket
    /// connections) counted in `leases` and shared by every instance using it (e.g. the same Redis
    /// store). See [`RouteLimits::share_leases`].
    pub fn from_config_with_leases<L: LeaseStore + Clone>(
        config: &LimitsConfig,
        store: &St,
        leases: &L,
    ) -> Result<Self, tollgate::Error> {
        Ok(Self::with_engine(Engine::from_config_with_leases(config, store, leases)?))
    }

    /// The middleware applying `routes` (e.g. [`LimitsConfig::route_limits_with`]'s, adjusted),
    /// with `config`'s client-address resolver and header style.
    pub fn from_route_limits(config: &LimitsConfig, routes: impl IntoIterator<Item = RouteLimits<St>>) -> Self {
        Self::with_engine(Engine::from_route_limits(config, routes))
    }
}

impl<S, B, St> Transform<S, ServiceRequest> for RateLimit<St>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
    St: Store,
{
    type Response = ServiceResponse<EitherBody<ResponseBody<B>>>;
    type Error = Error;
    type Transform = RateLimitMiddleware<S, St>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RateLimitMiddleware::new(Rc::new(service), Arc::clone(&self.config))))
    }
}

impl<St: Store> Config<St> {
    /// The engine's refusal as a response, through the hook when it refused a decision. Out of
    /// the allow path.
    #[inline(never)]
    pub(crate) fn respond(&self, refusal: &Refusal) -> HttpResponse {
        respond(refusal, self.refusal.as_ref())
    }

    /// The refusal hook, for a refusal made after the request was admitted (a payload cut off).
    pub(crate) fn hook(&self) -> Option<&RefusalHook> {
        self.refusal.as_ref()
    }
}

/// The engine's refusal as a response, through `hook` when it refused a decision.
pub(crate) fn respond(refusal: &Refusal, hook: Option<&RefusalHook>) -> HttpResponse {
    let response = fields::response(refusal);
    match (hook, refusal.decision()) {
        (Some(hook), Some(decision)) => hook(decision, response),
        _ => response,
    }
}
