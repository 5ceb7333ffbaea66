//! The response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::engine::ResponsePlan;
use tower::Service;

use super::bodies::{RequestBodies, ResponseBodies, Wrapped};
use super::body::BodyMeter;
use super::layer::plain_error;
use super::service::Prepared;

/// Checks still running (a remote store, or the delay action's wait).
pub(crate) type BoxPrepare<B> = Pin<Box<dyn Future<Output = Prepared<B>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): a refusal, or the inner service's
    /// response with the rate-limit headers added — or, when the request body was cut off while
    /// it streamed ([`RequestBody`](super::RequestBody)), the core's refusal in its place. It
    /// holds any concurrency lease until the response body takes it over, so dropping the future
    /// releases it. `B` is the request body type, `M` how bodies are passed on
    /// ([`Bodies`](super::Bodies)).
    pub struct ResponseFuture<F, S, B, M: RequestBodies<B> = Wrapped> {
        #[pin]
        state: State<F, S, M::Request>,
        bodies: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R> {
        Refused { response: Option<Response<Full<Bytes>>> },
        Preparing { prep: BoxPrepare<R>, service: Option<S> },
        Inner { #[pin] future: F, plan: ResponsePlan, meter: Option<Arc<BodyMeter>> },
    }
}

impl<F, S, B, M: RequestBodies<B>> fmt::Debug for ResponseFuture<F, S, B, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Refused { .. } => "refused",
            State::Preparing { .. } => "preparing",
            State::Inner { .. } => "inner",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<F, S, B, M: RequestBodies<B>> ResponseFuture<F, S, B, M> {
    pub(crate) fn refused(response: Response<Full<Bytes>>) -> Self {
        Self { state: State::Refused { response: Some(response) }, bodies: PhantomData }
    }

    pub(crate) fn preparing(prep: BoxPrepare<M::Request>, service: S) -> Self {
        Self { state: State::Preparing { prep, service: Some(service) }, bodies: PhantomData }
    }

    pub(crate) fn inner(future: F, plan: ResponsePlan, meter: Option<Arc<BodyMeter>>) -> Self {
        Self { state: State::Inner { future, plan, meter }, bodies: PhantomData }
    }
}

impl<F, S, B, M, ResBody, E> Future for ResponseFuture<F, S, B, M>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    S: Service<Request<M::Request>, Response = Response<ResBody>, Error = E, Future = F>,
    M: RequestBodies<B> + ResponseBodies<ResBody>,
{
    type Output = Result<Response<<M as ResponseBodies<ResBody>>::Response>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                StateProj::Refused { response } => {
                    // `None`: polled again after completion; answer rather than panic.
                    let response = response.take().unwrap_or_else(|| plain_error("polled_after_completion"));
                    return Poll::Ready(Ok(response.map(M::refusal)));
                }
                StateProj::Preparing { prep, service } => match ready!(prep.as_mut().poll(cx)) {
                    Prepared::Go { request, response: plan, meter } => {
                        let Some(mut service) = service.take() else {
                            return Poll::Ready(Ok(plain_error("polled_after_completion").map(M::refusal)));
                        };
                        let future = service.call(request);
                        state.set(State::Inner { future, plan, meter });
                    }
                    Prepared::Refuse(response) => {
                        // Finished: a later poll must not resume the completed checks.
                        state.set(State::Refused { response: None });
                        return Poll::Ready(Ok(response.map(M::refusal)));
                    }
                },
                // Polled again after completion, this polls the inner future again, which decides
                // what that does (as tower's own middleware does): marking the state finished here
                // costs every request about 37 instructions (measured).
                StateProj::Inner { future, plan, meter } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            std::mem::take(plan).failed(http::StatusCode::INTERNAL_SERVER_ERROR);
                            return Poll::Ready(Err(error));
                        }
                    };
                    // A body cut off while it streamed: the core's refusal, whatever the service
                    // made of the error (the request's leases go with the plan).
                    if let Some(refused) = meter.as_deref().and_then(BodyMeter::refused) {
                        return Poll::Ready(Ok(refused.map(M::refusal)));
                    }
                    return Poll::Ready(Ok(finish::<M, _>(response, std::mem::take(plan))));
                }
            }
        }
    }
}

/// Applies the engine's plan to the response: its rate-limit headers, and the in-flight lease
/// moved into the body. Inlined into `poll`: a response without leases is on the hot path.
#[inline(always)]
fn finish<M: ResponseBodies<B>, B>(mut response: Response<B>, plan: ResponsePlan) -> Response<M::Response> {
    let lease = plan.apply(response.status(), response.headers_mut());
    response.map(|b| M::response(b, lease))
}
