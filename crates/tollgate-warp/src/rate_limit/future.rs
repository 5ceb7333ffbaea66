//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::HeaderOptions;
use tollgate::engine::{Refusal, ResponsePlan};
use tower_service::Service;

use super::body::{BodyMeter, RequestBody, ResponseBody};
use super::config::respond;
use super::service::Prepared;

/// Checks still running (a remote store, an asynchronous identify hook, or the delay action's
/// wait).
pub(crate) type BoxPrepare<B> = Pin<Box<dyn Future<Output = Prepared<B>> + Send>>;

pin_project! {
    /// The response future of [`RateLimitService`](super::RateLimitService): a refusal, or the
    /// inner service's response with the rate-limit headers added — or, when the request body was
    /// cut off while it streamed ([`RequestBody`](super::RequestBody)), the core's refusal in its
    /// place. It holds any concurrency lease until the response body takes it over, so dropping
    /// the future releases it. `B` is the request body type.
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B> {
        Refused { response: Option<Response<Full<Bytes>>> },
        Preparing { prep: BoxPrepare<B>, service: Option<S> },
        Inner { #[pin] future: F, plan: ResponsePlan, meter: Option<Arc<BodyMeter>> },
    }
}

impl<F, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Refused { .. } => "refused",
            State::Preparing { .. } => "preparing",
            State::Inner { .. } => "inner",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<F, S, B> ResponseFuture<F, S, B> {
    pub(crate) fn refused(response: Response<Full<Bytes>>) -> Self {
        Self { state: State::Refused { response: Some(response) } }
    }

    pub(crate) fn preparing(prep: BoxPrepare<B>, service: S) -> Self {
        Self { state: State::Preparing { prep, service: Some(service) } }
    }

    #[inline(always)]
    pub(crate) fn inner(future: F, plan: ResponsePlan, meter: Option<Arc<BodyMeter>>) -> Self {
        Self { state: State::Inner { future, plan, meter } }
    }
}

impl<F, S, B, ResBody, E> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>, Error = E, Future = F>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                StateProj::Refused { response } => {
                    // `None`: polled again after completion; answer rather than panic.
                    let response = response.take().unwrap_or_else(|| plain_error("polled_after_completion"));
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                StateProj::Preparing { prep, service } => match ready!(prep.as_mut().poll(cx)) {
                    Prepared::Go { request, response: plan, meter } => {
                        let Some(mut service) = service.take() else {
                            return Poll::Ready(Ok(plain_error("polled_after_completion").map(ResponseBody::full)));
                        };
                        let future = service.call(request);
                        state.set(State::Inner { future, plan, meter });
                    }
                    Prepared::Refuse(response) => {
                        // Finished: a later poll must not resume the completed checks.
                        state.set(State::Refused { response: None });
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    }
                },
                StateProj::Inner { future, plan, meter } => {
                    let mut response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            std::mem::take(plan).failed(http::StatusCode::INTERNAL_SERVER_ERROR);
                            return Poll::Ready(Err(error));
                        }
                    };
                    // The body was cut off while the application read it: whatever it answered
                    // (warp rejects a body it could not read with 400), the client gets the
                    // core's refusal — the 413 a declared length over the largest body gets, the
                    // 429 of the body-bytes limit. The request's leases go with the plan.
                    if let Some(refused) = meter.as_deref().and_then(BodyMeter::refused) {
                        return Poll::Ready(Ok(refused.map(ResponseBody::full)));
                    }
                    let lease = std::mem::take(plan).apply(response.status(), response.headers_mut());
                    return Poll::Ready(Ok(response.map(|body| ResponseBody::inner(body, lease))));
                }
            }
        }
    }
}

/// An answer without a decision (a 500 when the response future is misused).
fn plain_error(error: &'static str) -> Response<Full<Bytes>> {
    respond(&Refusal::error(&HeaderOptions::default(), http::StatusCode::INTERNAL_SERVER_ERROR, error, None), None)
}
