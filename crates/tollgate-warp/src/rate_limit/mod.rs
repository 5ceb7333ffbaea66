//! The middleware: [`RateLimit`] holds the limits (the core's [`Engine`]), and
//! [`RateLimit::service`] wraps a warp filter in a [`RateLimitService`], which
//! [`serve`](crate::serve) runs.
//!
//! Every request goes through the core's three steps before any filter sees it: the service
//! builds the engine's view of the `http::Request` (method, path, peer address, headers, the
//! body's declared length, the [keys](crate::keys) in its extensions), asks the engine, and
//! applies the plan. A refusal — 429 over a rate, 413 for a body over its largest size, 503 when
//! a global cap is full or a store failed closed — is the response itself, with its status,
//! headers and JSON body: no warp rejection, so no `recover` to write, no `or` branch tried, no
//! 500. An admitted request gets its rate-limit headers on the response, its body counted while
//! it streams ([`RequestBody`]), and its in-flight lease held by the response body until it is
//! finished or dropped.
//!
//! The body is counted by the core's [`BodyCounter`](tollgate::engine::BodyCounter): past the
//! largest body it is cut off and the response is the core's 413. A body of unknown length — a
//! chunked HTTP/1.1 upload, or an HTTP/2 request without `Content-Length` ([`serve`](crate::serve)
//! speaks HTTP/2 to clients with prior knowledge) — is charged to the body-bytes limit part by
//! part as the filter reads it: a request without a body costs nothing, an upload what it turns
//! out to be, and one that passes the budget is cut off there and answered with the core's 429
//! (its parts read before stay charged). It is never refused 411 nor charged the route's largest
//! body. A body whose length is known up front (`Content-Length`, or hyper's exact size hint — 0
//! for an HTTP/2 request that ended with its headers) is charged it before any filter runs.
//!
//! ```
//! use warp::Filter;
//! use tollgate::{KeyKind, Limit, Policy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
//! let routes = warp::path("hello").map(|| "hello");
//! let service = tollgate_warp::RateLimit::new(policy).service(routes);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(tollgate_warp::serve(listener, service));
//!
//! // A bare HTTP/1.1 client: the first request passes, the second gets the 429 itself.
//! async fn get(addr: std::net::SocketAddr) -> std::io::Result<String> {
//!     use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!     let mut stream = tokio::net::TcpStream::connect(addr).await?;
//!     stream.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
//!     let mut response = String::new();
//!     stream.read_to_string(&mut response).await?;
//!     Ok(response)
//! }
//! assert!(get(addr).await?.starts_with("HTTP/1.1 200"));
//! let refused = get(addr).await?;
//! assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
//! assert!(refused.contains("retry-after: 60"));
//! assert!(refused.ends_with(r#"{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":60}"#));
//! # Ok(())
//! # }
//! ```

mod body;
mod config;
mod future;
mod service;

pub use body::{BodyRefused, BodyTooLarge, BoxError, RequestBody, ResponseBody};
pub use config::{IdentifyFuture, RefusalHook};
pub use future::ResponseFuture;
pub use service::RateLimitService;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tollgate::config::{Config as TomlConfig, RouteLimits};
use tollgate::engine::{Engine, Limits};
use tollgate::live::{CurrentEngine, EngineSource};
use tollgate::{ClientIpResolver, Decision, Error, HeaderOptions, KeyKind, LeaseStore, MemoryStore, Policy, Store};
use tower_service::Service;
use warp::Filter;

use self::config::{Config, Identify};
use crate::keys::Identified;

/// The limits a warp application is served with: see the [module docs](self). Cheap to clone
/// (an `Arc`); build it once.
pub struct RateLimit<St: Store = MemoryStore> {
    config: Arc<Config<St>>,
}

impl<St: Store> Clone for RateLimit<St> {
    fn clone(&self) -> Self {
        Self { config: Arc::clone(&self.config) }
    }
}

impl<St: Store> fmt::Debug for RateLimit<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("engine", &self.config.engine)
            .field("refusal", &self.config.refusal.as_ref().map(|_| "custom"))
            .field("identify", &self.config.identify.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl<St: Store> RateLimit<St> {
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
    /// use tollgate_warp::RateLimit;
    ///
    /// let live = LiveEngine::from_config("[policies.api]\nlimits = [{ name = \"per_ip\", quota = \"10/s\" }]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"".parse()?)?;
    /// let limits = RateLimit::with_engine(live.clone());
    /// // Later, while serving: the service decides with the new limits from the next request.
    /// live.set_key_quota("api", "per_ip", "203.0.113.9", Some("100/s".parse()?))?;
    /// # let _ = limits;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_engine(engine: impl Into<EngineSource<St>>) -> Self {
        Self { config: Arc::new(Config { engine: engine.into(), refusal: None, identify: None }) }
    }

    /// The engine deciding for these limits now (a live engine's current one).
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
    /// syntax (`/users/{id}`, `/assets/{*rest}`; see [the pattern
    /// syntax](tollgate::engine#route-patterns)), matched on the request's path before any filter
    /// runs (or a [`RouteName`](crate::RouteName) in the extensions). The pattern a request
    /// matched is its [`KeyKind::Route`] key.
    ///
    /// A pattern names the paths the filter serves: a `warp::path("x")` that does not end the
    /// path (no `path::end()`, unlike `path!("x")`) also serves `/x/...`, which `/x` does not
    /// match, so its limits need the pattern `/x/{*rest}` (with `/x` for the path itself). The
    /// core matches the other spellings warp serves as their route: a path is matched
    /// percent-decoded (`/%6Cogin` is `/login`), and without its one trailing slash when nothing
    /// matches it with the slash (`/login/`, which `path!("login")` serves, spends `/login`'s
    /// quota).
    #[must_use]
    pub fn route(self, path: &str, limits: Limits<St>) -> Self {
        self.route_methods(path, [], limits)
    }

    /// As [`RateLimit::route`], for requests with one of `methods` only (all when empty). A HEAD
    /// request that no entry names takes the limits of its path's GET: warp's `get()` rejects
    /// HEAD, but a filter without a method filter serves HEAD with the GET route's handler, so a
    /// HEAD cannot run a handler unlimited.
    #[must_use]
    pub fn route_methods(self, path: &str, methods: impl IntoIterator<Item = Method>, limits: Limits<St>) -> Self {
        self.edit_engine(|e| e.route_methods(path, methods, limits))
    }

    /// Trusts the proxies of `resolver` for the client address.
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

    /// Finds each request's identity, tier or custom key with `hook` before the checks (e.g.
    /// from an API key header); what it finds is put in the request's extensions, where the
    /// limits and the filters (`warp::ext::get::<Identity>()`) read it.
    ///
    /// ```
    /// use tollgate::{KeyKind, Limit, Policy};
    /// use tollgate_warp::{Identified, RateLimit};
    ///
    /// let policy = Policy::builder("api").limit(Limit::new("per_user", "100/min".parse()?).key(KeyKind::identity())).build()?;
    /// let limit = RateLimit::new(policy).identify(|request| match request.headers.get("x-api-key") {
    ///     Some(key) => Identified::default().identity(String::from_utf8_lossy(key.as_bytes())),
    ///     None => Identified::anonymous(),
    /// });
    /// # let _ = limit;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn identify(self, hook: impl Fn(&Parts) -> Identified + Send + Sync + 'static) -> Self {
        let hook = Identify::Sync(Arc::new(hook));
        self.edit(|c| c.identify = Some(hook))
    }

    /// [`RateLimit::identify`] with an asynchronous `hook` (e.g. a session store lookup): the
    /// checks of every request then run in a boxed future after it.
    #[must_use]
    pub fn identify_async<Fut>(self, hook: impl Fn(&Parts) -> Fut + Send + Sync + 'static) -> Self
    where
        Fut: Future<Output = Identified> + Send + 'static,
    {
        let hook = Identify::Async(Arc::new(move |parts: &Parts| -> IdentifyFuture { Box::pin(hook(parts)) }));
        self.edit(|c| c.identify = Some(hook))
    }

    /// Wraps the warp `filter` (all of the application's routes): the service
    /// [`serve`](crate::serve) runs, or any hyper server does (with the peer's `SocketAddr` in
    /// the request extensions for IP keys). The filter's rejections (404, 405, ...) become
    /// warp's own responses, as under `warp::serve`; the limits' refusals are never rejections.
    /// The filter's error is `warp::Rejection`, as for any filter that can reject (a path, a
    /// method); one that never rejects (`warp::any().map(...)`, whose error is `Infallible`) is
    /// passed as `filter.boxed()`.
    ///
    /// ```
    /// use warp::Filter;
    ///
    /// let limit = tollgate_warp::RateLimit::from_config(&"".parse()?)?;
    /// let routes = warp::path!("hello").map(|| "hello");
    /// let service = limit.service(routes);
    /// let never_rejects = limit.service(warp::any().map(|| "anything").boxed());
    /// # let _ = (service, never_rejects);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn service<F>(
        &self,
        filter: F,
    ) -> RateLimitService<
        impl Service<Request<RequestBody<Incoming>>, Response = warp::reply::Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static,
        St,
    >
    where
        F: Filter<Error = warp::Rejection> + Clone + Send + Sync + 'static,
        F::Extract: warp::Reply,
    {
        self.layer(warp::service(filter))
    }

    /// Wraps any service of `http` requests (the request body it gets is a [`RequestBody`]).
    pub fn layer<S>(&self, inner: S) -> RateLimitService<S, St> {
        RateLimitService::from_config(inner, Arc::clone(&self.config))
    }
}

impl RateLimit<MemoryStore> {
    /// The limits `config` describes, on one in-memory store: `[[routes]]` and `[[websocket]]`
    /// entries become per-route [`Limits`] (see [`Engine::from_config_with`]), `trusted_proxies`
    /// the client-address resolver, `headers` the header style. Routes not in the configuration
    /// are not limited.
    pub fn from_config(config: &TomlConfig) -> Result<Self, Error> {
        Self::from_config_with(config, &config.memory_store())
    }
}

impl<St: Store + Clone> RateLimit<St> {
    /// [`RateLimit::from_config`] on clones of `store` (e.g. a Redis store).
    pub fn from_config_with(config: &TomlConfig, store: &St) -> Result<Self, Error> {
        Ok(Self::with_engine(Engine::from_config_with(config, store)?))
    }

    /// [`RateLimit::from_config_with`], the concurrency leases (in-flight requests, WebSocket
    /// connections) counted in `leases` and shared by every instance using it (e.g. the same
    /// Redis store).
    pub fn from_config_with_leases<L: LeaseStore + Clone>(
        config: &TomlConfig,
        store: &St,
        leases: &L,
    ) -> Result<Self, Error> {
        Ok(Self::with_engine(Engine::from_config_with_leases(config, store, leases)?))
    }

    /// The limits applying `routes` (e.g. [`TomlConfig::route_limits_with`]'s, adjusted), with
    /// `config`'s client-address resolver and header style.
    pub fn from_route_limits(config: &TomlConfig, routes: impl IntoIterator<Item = RouteLimits<St>>) -> Self {
        Self::with_engine(Engine::from_route_limits(config, routes))
    }
}
