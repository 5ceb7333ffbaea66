//! The response body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::ConnectionLease;

pin_project! {
    /// The body of [`RateLimit`](super::RateLimit)'s responses: a refusal's bytes, or the inner
    /// body holding the request's in-flight lease until it is finished or dropped.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { #[pin] body: Full<Bytes> },
        Inner { #[pin] body: B, lease: Option<ConnectionLease> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(body: Full<Bytes>) -> Self {
        Self { kind: Kind::Full { body } }
    }

    pub(crate) fn inner(body: B, lease: Option<ConnectionLease>) -> Self {
        Self { kind: Kind::Inner { body, lease } }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { .. } => f.write_str("ResponseBody::Refusal"),
            Kind::Inner { lease, .. } => f.debug_struct("ResponseBody").field("lease", lease).finish_non_exhaustive(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Inner { body, lease } => {
                let frame = body.poll_frame(cx);
                if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    // Finished: give the in-flight place back now, not when hyper drops the body.
                    lease.take();
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { body } => body.is_end_stream(),
            Kind::Inner { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { body } => body.size_hint(),
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}
