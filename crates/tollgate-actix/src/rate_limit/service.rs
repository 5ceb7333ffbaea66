//! The middleware service: build the core's view of the request, ask the engine, apply its plan.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, forward_ready};
use actix_web::{Error, HttpMessage};
use futures_util::future::LocalBoxFuture;
use pin_project_lite::pin_project;
use tollgate::engine::{Admit, BodyCharge, Engine, ResponsePlan};
use tollgate::{HeaderOptions, MemoryStore, Store};

use super::body::{CutOff, LimitedPayload, ResponseBody};
use super::fields;
use super::transform::Config;
use crate::view::{CopiedKeys, View};

/// The response type of the middleware: the inner service's body (left, holding any in-flight
/// lease) or a refusal (right).
pub type LimitedResponse<B> = ServiceResponse<EitherBody<ResponseBody<B>>>;

/// The middleware service [`RateLimit`](super::RateLimit) wraps each worker's inner service in.
pub struct RateLimitMiddleware<S, St: Store = MemoryStore> {
    service: Rc<S>,
    config: Arc<Config<St>>,
}

impl<S, St: Store> fmt::Debug for RateLimitMiddleware<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitMiddleware").finish_non_exhaustive()
    }
}

impl<S, St: Store> RateLimitMiddleware<S, St> {
    pub(crate) fn new(service: Rc<S>, config: Arc<Config<St>>) -> Self {
        Self { service, config }
    }
}

impl<S, B, St> Service<ServiceRequest> for RateLimitMiddleware<S, St>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
    St: Store,
{
    type Response = LimitedResponse<B>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, B>;

    forward_ready!(service);

    #[inline]
    fn call(&self, mut request: ServiceRequest) -> Self::Future {
        // The engine deciding this request: the middleware's, or a live engine's current one.
        let current = self.config.engine.load();
        // Dereferenced once: every use below reads the engine through a plain reference.
        let engine: &Engine<St> = &current;
        // The extensions are borrowed only within this block, where nothing awaits.
        let checked = {
            let view = View::borrowing(&request);
            let limits = engine.limits_for(&view);
            limits.decides_at_once().then(|| engine.check_now(limits, &view))
        };
        let Some(checked) = checked else {
            // A store with I/O (Redis): the checks run in a boxed future.
            let (service, config) = (Rc::clone(&self.service), Arc::clone(&self.config));
            return ResponseFuture::boxed(Box::pin(check_later(service, config, request)));
        };
        let Admit { wait, max_body, body_bytes, response, .. } = match checked {
            Ok(admit) => admit,
            Err(refusal) => {
                let refused = request.into_response(self.config.respond(&refusal));
                return ResponseFuture::refused(refused);
            }
        };
        let body = pass_on(&mut request, &response, max_body, body_bytes, engine.header_options(), &self.config);
        // Let go of a live engine before the application runs: the request holds what its plan
        // took (the leases, the body charge), not the engine.
        drop(current);
        if wait.is_zero() {
            return ResponseFuture::inner(self.service.call(request), response, body);
        }
        let service = Rc::clone(&self.service);
        ResponseFuture::boxed(Box::pin(async move {
            tokio::time::sleep(wait).await;
            match service.call(request).await {
                Ok(inner) => Ok(finish(inner, response, body.as_deref())),
                Err(error) => {
                    response.failed(error_status(&error));
                    Err(error)
                }
            }
        }))
    }
}

/// The engine's checks for stores with I/O, then the delay action's wait, then the inner
/// service. The extension keys are copied out first: no `RefCell` borrow lives across an await.
async fn check_later<S, B, St>(
    service: Rc<S>,
    config: Arc<Config<St>>,
    mut request: ServiceRequest,
) -> Result<LimitedResponse<B>, Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    St: Store,
{
    let copied = CopiedKeys::of(&request.extensions());
    // Held across the checks' awaits: a live engine's current one, owned.
    let engine = config.engine.load_owned();
    let checked = {
        let view = View::with(&request, copied);
        let limits = engine.limits_for(&view);
        engine.check(limits, &view).await
    };
    let Admit { wait, max_body, body_bytes, response, .. } = match checked {
        Ok(admit) => admit,
        Err(refusal) => return Ok(request.into_response(config.respond(&refusal)).map_into_right_body()),
    };
    let body = pass_on(&mut request, &response, max_body, body_bytes, engine.header_options(), &config);
    drop(engine);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    match service.call(request).await {
        Ok(inner) => Ok(finish(inner, response, body.as_deref())),
        Err(error) => {
            response.failed(error_status(&error));
            Err(error)
        }
    }
}

/// Gives the handler what the plan leaves it: the WebSocket lease in the extensions, and the
/// payload counted while it streams against the route's largest body and, when its length was
/// not known up front, charged to the body-bytes limit (`charge`) — with where the response
/// future finds the refusal that cuts it off.
#[inline(always)]
fn pass_on<St: Store>(
    request: &mut ServiceRequest,
    response: &ResponsePlan,
    max_body: Option<u64>,
    charge: Option<BodyCharge>,
    options: &HeaderOptions,
    config: &Config<St>,
) -> Option<Rc<CutOff>> {
    if let Some(upgrade) = response.upgrade() {
        request.extensions_mut().insert(upgrade.clone());
    }
    if max_body.is_none() && charge.is_none() {
        return None;
    }
    count_payload(request, max_body, charge, options, config)
}

/// [`pass_on`]'s payload, on routes with body limits.
#[inline(never)]
fn count_payload<St: Store>(
    request: &mut ServiceRequest,
    max_body: Option<u64>,
    charge: Option<BodyCharge>,
    options: &HeaderOptions,
    config: &Config<St>,
) -> Option<Rc<CutOff>> {
    let payload = request.take_payload();
    match LimitedPayload::new(payload, max_body, charge, options, config.hook()) {
        Ok((payload, cut_off)) => {
            request.set_payload(Payload::Stream { payload: Box::pin(payload) });
            Some(cut_off)
        }
        Err(payload) => {
            request.set_payload(payload);
            None
        }
    }
}

/// Applies the engine's plan to the inner service's response: its rate-limit headers, and the
/// in-flight lease moved into the body. When the request's body was cut off while it streamed
/// (past the route's largest body, or over its body-bytes limit), the response is the core's
/// refusal instead.
#[inline(always)]
fn finish<B>(mut response: ServiceResponse<B>, plan: ResponsePlan, body: Option<&CutOff>) -> LimitedResponse<B> {
    if let Some(refused) = body.and_then(CutOff::refused) {
        return cut_off(response, plan, refused);
    }
    let status = http::StatusCode::from_u16(response.status().as_u16()).unwrap_or(http::StatusCode::OK);
    // The core writes its fields straight into actix's map, each converted as it comes.
    let lease = plan.apply(status, &mut fields::Fields(response.headers_mut()));
    response.map_body(|_, body| EitherBody::left(ResponseBody::new(body, lease)))
}

/// The status actix-web answers `error` with, for the core's count of a failed request.
fn error_status(error: &Error) -> http::StatusCode {
    http::StatusCode::from_u16(error.as_response_error().status_code().as_u16())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

/// The core's refusal (`refused`, of `status`) in place of the handler's response to a body cut
/// off while it streamed (a lenient handler's 200 on half the body, or actix's plain-text 413
/// or 400). The plan is dropped so that its leases are given back now: no body holds them.
#[cold]
#[inline(never)]
fn cut_off<B>(
    response: ServiceResponse<B>,
    plan: ResponsePlan,
    refused: actix_web::HttpResponse,
) -> LimitedResponse<B> {
    // The admission's rate-limit headers go nowhere: the refusal carries its own (a 413 none,
    // as for a declared length; a 429 the body-bytes limit's). An adaptive limit counts nothing
    // of a request whose body was cut off, as on the other adapters.
    drop(plan);
    response.into_response(refused).map_into_right_body()
}

pin_project! {
    /// The response future of [`RateLimitMiddleware`]: a refusal, or the inner service's response
    /// with the rate-limit headers added (the core's refusal in its place when the request's
    /// body was cut off while it streamed: 413 past the route's largest body, 429 over its
    /// body-bytes limit). It holds any concurrency lease until the response body takes it over,
    /// so dropping the future releases it.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Refused { response: Option<ServiceResponse<BoxBody>> },
        Inner { #[pin] future: F, plan: ResponsePlan, body: Option<Rc<CutOff>> },
        Boxed { future: LocalBoxFuture<'static, Result<LimitedResponse<B>, Error>> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Refused { .. } => "refused",
            State::Inner { .. } => "inner",
            State::Boxed { .. } => "checking",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn refused(response: ServiceResponse<BoxBody>) -> Self {
        Self { state: State::Refused { response: Some(response) } }
    }

    fn inner(future: F, plan: ResponsePlan, body: Option<Rc<CutOff>>) -> Self {
        Self { state: State::Inner { future, plan, body } }
    }

    fn boxed(future: LocalBoxFuture<'static, Result<LimitedResponse<B>, Error>>) -> Self {
        Self { state: State::Boxed { future } }
    }
}

impl<F, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = Result<LimitedResponse<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map_into_right_body())),
                // Polled again after completion: an error rather than a panic.
                None => Poll::Ready(Err(actix_web::error::ErrorInternalServerError("polled after completion"))),
            },
            StateProj::Inner { future, plan, body } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(error) => {
                        std::mem::take(plan).failed(error_status(&error));
                        return Poll::Ready(Err(error));
                    }
                };
                Poll::Ready(Ok(finish(response, std::mem::take(plan), body.as_deref())))
            }
            StateProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
