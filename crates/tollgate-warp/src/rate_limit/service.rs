//! The service: build the core's view of the request, ask the engine, apply its plan.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tollgate::engine::{Admit, Engine, ResponsePlan};
use tollgate::websocket::UpgradeLease;
use tollgate::{MemoryStore, Store};
use tower_service::Service;

use super::body::{BodyMeter, RequestBody, ResponseBody};
use super::config::{Config, Identify};
use super::future::{BoxPrepare, ResponseFuture};
use tollgate::request::HttpView;

/// A service with the limits of a [`RateLimit`](super::RateLimit) in front of it: see the
/// [module docs](super). Made by [`RateLimit::service`](super::RateLimit::service) around a warp
/// filter (or [`RateLimit::layer`](super::RateLimit::layer) around any service).
pub struct RateLimitService<S, St: Store = MemoryStore> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S: Clone, St: Store> Clone for RateLimitService<S, St> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: Arc::clone(&self.config) }
    }
}

impl<S, St: Store> fmt::Debug for RateLimitService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService").field("engine", &self.config.engine).finish_non_exhaustive()
    }
}

impl<S, St: Store> RateLimitService<S, St> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the asynchronous checks concluded: call the inner service with the request, or answer
/// with a refusal.
// Moved once per request on the asynchronous path; boxing the large variant would allocate.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared<B> {
    Go { request: Request<RequestBody<B>>, response: ResponsePlan, meter: Option<Arc<BodyMeter>> },
    Refuse(Response<Full<Bytes>>),
}

impl<S, St, B, ResBody> Service<Request<B>> for RateLimitService<S, St>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: Store,
    B: Body + Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Always inlined: a caller that stores the future (hyper's connection) then gets it written in
    // place, where a call returns it through a temporary: one copy fewer of the inner future,
    // which holds warp's whole request.
    #[inline(always)]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match &self.config.identify {
            None => {}
            Some(Identify::Sync(hook)) => {
                let (mut parts, body) = request.into_parts();
                hook(&parts).insert_into(&mut parts.extensions);
                request = Request::from_parts(parts, body);
            }
            Some(Identify::Async(_)) => {
                return ResponseFuture::preparing(prepare(&self.config, request), self.take_ready_inner());
            }
        }
        // The engine deciding this request: the service's, or a live engine's current one.
        let current = self.config.engine.load();
        // Dereferenced once: every use below reads the engine through a plain reference.
        let engine: &Engine<St> = &current;
        // Every body is counted while it streams: one of unknown length is charged what it turns
        // out to be (nothing, for an HTTP/2 GET), never refused 411.
        let view = HttpView::<_>::of(&request, || request.body().size_hint().exact()).counting_body();
        let limits = engine.limits_for(&view);
        if !limits.decides_at_once() {
            return ResponseFuture::preparing(prepare(&self.config, request), self.take_ready_inner());
        }
        // The stores decide at once: check inside `call`, with nothing boxed.
        let Admit { wait, max_body, body_bytes, response, .. } = match engine.check_now(limits, &view) {
            Ok(admit) => admit,
            Err(refusal) => return ResponseFuture::refused(self.config.respond(&refusal)),
        };
        if let Some(upgrade) = response.upgrade() {
            hand_upgrade(request.extensions_mut(), upgrade);
        }
        let meter = BodyMeter::of(max_body, body_bytes, engine.header_options(), self.config.refusal.as_ref());
        // Let go of a live engine before the application runs: the request holds what its plan
        // took (the leases, the body charge), not the engine.
        drop(current);
        let request = request.map(|body| RequestBody::new(body, meter.clone()));
        if wait.is_zero() {
            return ResponseFuture::inner(self.inner.call(request), response, meter);
        }
        let prep: BoxPrepare<B> = Box::pin(async move {
            tokio::time::sleep(wait).await;
            Prepared::Go { request, response, meter }
        });
        ResponseFuture::preparing(prep, self.take_ready_inner())
    }
}

impl<S: Clone, St: Store> RateLimitService<S, St> {
    /// The service made ready by `poll_ready`, leaving a clone in its place (tower's rule: the
    /// ready one must serve this request).
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// The identify hook (when asynchronous), the engine's checks for stores with I/O, then the
/// delay action's wait, in a boxed future.
fn prepare<St: Store, B: Body + Send + 'static>(config: &Arc<Config<St>>, request: Request<B>) -> BoxPrepare<B> {
    let config = Arc::clone(config);
    Box::pin(async move {
        // Only the parts are borrowed across the awaits: the body need not be `Sync`.
        let (mut parts, body) = request.into_parts();
        match &config.identify {
            Some(Identify::Async(hook)) => hook(&parts).await.insert_into(&mut parts.extensions),
            Some(Identify::Sync(hook)) => hook(&parts).insert_into(&mut parts.extensions),
            None => {}
        }
        let exact = body.size_hint().exact();
        // Held across the checks' awaits: a live engine's current one, owned.
        let engine = config.engine.load_owned();
        let checked = {
            let view = HttpView::<_>::of_parts(&parts, move || exact).counting_body();
            let limits = engine.limits_for(&view);
            if limits.decides_at_once() { engine.check_now(limits, &view) } else { engine.check(limits, &view).await }
        };
        let Admit { wait, max_body, body_bytes, response, .. } = match checked {
            Ok(admit) => admit,
            Err(refusal) => return Prepared::Refuse(config.respond(&refusal)),
        };
        if let Some(upgrade) = response.upgrade() {
            hand_upgrade(&mut parts.extensions, upgrade);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let meter = BodyMeter::of(max_body, body_bytes, engine.header_options(), config.refusal.as_ref());
        drop(engine);
        let body = RequestBody::new(body, meter.clone());
        Prepared::Go { request: Request::from_parts(parts, body), response, meter }
    })
}

/// Puts the WebSocket lease where `tollgate_warp::ws()` finds it, with the slot its `or` branches
/// pass the handshake on in.
fn hand_upgrade(extensions: &mut http::Extensions, upgrade: &UpgradeLease) {
    extensions.insert(upgrade.clone());
    #[cfg(feature = "websocket")]
    extensions.insert(crate::websocket::Handshake::default());
}
