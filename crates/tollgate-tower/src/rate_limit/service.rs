//! The middleware service: build the core's view of the request, ask the engine, apply its plan.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tollgate::engine::{Admit, Engine, ResponsePlan};
use tollgate::{MemoryStore, Store};
use tower::Service;

use super::bodies::{RequestBodies, ResponseBodies, Wrapped};
use super::body::BodyMeter;
use super::future::{BoxPrepare, ResponseFuture};
use super::layer::Config;
use crate::view::View;

/// The middleware: see the [module docs](crate::rate_limit). `M` says how bodies are passed on
/// ([`Bodies`](super::Bodies)).
pub struct RateLimit<S, St: Store = MemoryStore, M = Wrapped> {
    inner: S,
    config: Arc<Config<St>>,
    bodies: PhantomData<fn() -> M>,
}

impl<S: Clone, St: Store, M> Clone for RateLimit<S, St, M> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: Arc::clone(&self.config), bodies: PhantomData }
    }
}

impl<S: fmt::Debug, St: Store, M> fmt::Debug for RateLimit<S, St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, St: Store, M> RateLimit<S, St, M> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config, bodies: PhantomData }
    }

    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &super::RateLimitLayer<St, M>) -> Self {
        Self::from_config(inner, Arc::clone(&layer.config))
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
    Go { request: Request<B>, response: ResponsePlan, meter: Option<Arc<BodyMeter>> },
    Refuse(Response<Full<Bytes>>),
}

impl<S, St, M, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, M>
where
    S: Service<Request<M::Request>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: Store,
    M: RequestBodies<ReqBody> + ResponseBodies<ResBody>,
    M::Request: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<<M as ResponseBodies<ResBody>>::Response>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Always inlined: a caller that stores the future (hyper's connection, a `Oneshot`) then gets
    // it written in place, where a call returns it through a temporary: one copy of the inner
    // future fewer (about 130 instructions per request around an axum `Router`, measured).
    #[inline(always)]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The engine deciding this request: the layer's, or a live engine's current one.
        let current = self.config.engine.load();
        // Dereferenced once: every use below reads the engine through a plain reference.
        let engine: &Engine<St> = &current;
        // The middleware counts every body while it streams: one of unknown length is charged
        // what it turns out to be (nothing, for an HTTP/2 GET), never refused 411.
        let view = View::of(&request, || M::exact_len(request.body())).counting_body();
        let limits = engine.limits_for(&view);
        if !limits.decides_at_once() {
            return ResponseFuture::preparing(
                prepare::<St, M, ReqBody>(&self.config, request),
                self.take_ready_inner(),
            );
        }
        // The stores decide at once: check inside `call`, with nothing boxed.
        let Admit { wait, max_body, body_bytes, response, .. } = match engine.check_now(limits, &view) {
            Ok(admit) => admit,
            Err(refusal) => return ResponseFuture::refused(self.config.respond(&refusal)),
        };
        if let Some(upgrade) = response.upgrade() {
            request.extensions_mut().insert(upgrade.clone());
        }
        let meter = self.config.body_meter(engine.header_options(), max_body, body_bytes);
        // Let go of a live engine before the application runs: a request holds only what its
        // plan took (the leases, the body charge), so a reload is never held up by it.
        drop(current);
        let request = M::pass_on(request, meter.clone());
        if wait.is_zero() {
            return ResponseFuture::inner(self.inner.call(request), response, meter);
        }
        let prep: BoxPrepare<M::Request> = Box::pin(async move {
            tokio::time::sleep(wait).await;
            Prepared::Go { request, response, meter }
        });
        ResponseFuture::preparing(prep, self.take_ready_inner())
    }
}

impl<S: Clone, St: Store, M> RateLimit<S, St, M> {
    /// The service made ready by `poll_ready`, leaving a clone in its place (tower's rule: the
    /// ready one must serve this request).
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// The engine's checks for stores with I/O, then the delay action's wait, in a boxed future.
fn prepare<St: Store, M: RequestBodies<B>, B: Send + 'static>(
    config: &Arc<Config<St>>,
    request: Request<B>,
) -> BoxPrepare<M::Request>
where
    M::Request: Send + 'static,
{
    let config = Arc::clone(config);
    Box::pin(async move {
        // Only the parts are borrowed across the awaits: the body need not be `Sync`.
        let (mut parts, body) = request.into_parts();
        let exact = M::exact_len(&body);
        // Held across the checks' awaits: a live engine's current one, owned.
        let engine = config.engine.load_owned();
        let checked = {
            let view = View::of_parts(&parts, move || exact).counting_body();
            let limits = engine.limits_for(&view);
            engine.check(limits, &view).await
        };
        let Admit { wait, max_body, body_bytes, response, .. } = match checked {
            Ok(admit) => admit,
            Err(refusal) => return Prepared::Refuse(config.respond(&refusal)),
        };
        if let Some(upgrade) = response.upgrade() {
            parts.extensions.insert(upgrade.clone());
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let meter = config.body_meter(engine.header_options(), max_body, body_bytes);
        Prepared::Go { request: Request::from_parts(parts, M::request(body, meter.clone())), response, meter }
    })
}
