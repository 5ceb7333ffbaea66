//! The response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::Service;

use super::bodies::{RequestBodies, ResponseBodies, Wrapped};
use super::layer::plain_error;
use super::service::{Extra, Leases, Prepared};

/// Checks still running (a remote store, or the delay action's wait).
pub(crate) type BoxPrepare<B> = Pin<Box<dyn Future<Output = Prepared<B>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit): a refusal, or the inner service's
    /// response with the rate-limit headers added. It holds any concurrency lease until the
    /// response body takes it over, so dropping the future releases it. `B` is the request body
    /// type, `M` how bodies are passed on ([`Bodies`](super::Bodies)).
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
        Inner { #[pin] future: F, extra: Extra },
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

    pub(crate) fn inner(future: F, extra: Extra) -> Self {
        Self { state: State::Inner { future, extra }, bodies: PhantomData }
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
                    let response = response.take().unwrap_or_else(|| {
                        plain_error(StatusCode::INTERNAL_SERVER_ERROR, "polled_after_completion", None)
                    });
                    return Poll::Ready(Ok(response.map(M::refusal)));
                }
                StateProj::Preparing { prep, service } => match ready!(prep.as_mut().poll(cx)) {
                    Prepared::Go { request, extra, .. } => {
                        let Some(mut service) = service.take() else {
                            let response =
                                plain_error(StatusCode::INTERNAL_SERVER_ERROR, "polled_after_completion", None);
                            return Poll::Ready(Ok(response.map(M::refusal)));
                        };
                        let future = service.call(request);
                        state.set(State::Inner { future, extra });
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
                StateProj::Inner { future, extra } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(finish::<M, _>(response, std::mem::take(extra))));
                }
            }
        }
    }
}

/// Adds the decision's headers and moves the lease into the body. Inlined into `poll`: a
/// response without leases is on the hot path.
#[inline(always)]
fn finish<M: ResponseBodies<B>, B>(mut response: Response<B>, extra: Extra) -> Response<M::Response> {
    extra.shown.render(response.headers_mut());
    match extra.leases {
        None => response.map(|b| M::response(b, None)),
        Some(leases) => hand_over::<M, _>(response, *leases),
    }
}

/// Moves the in-flight lease into the response body; warns when an upgrade's lease was not taken.
fn hand_over<M: ResponseBodies<B>, B>(response: Response<B>, leases: Leases) -> Response<M::Response> {
    let Leases { lease, upgrade } = leases;
    if let Some(upgrade) = &upgrade
        && upgrade.release_untaken()
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        tracing::warn!(
            "a WebSocket upgrade succeeded but its handler did not take the connection lease \
             (use `LimitedUpgrade` or `UpgradeLease::take`); the connection is not counted"
        );
    }
    response.map(|b| M::response(b, lease))
}
