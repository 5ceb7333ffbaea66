//! The bodies: the response body holding the in-flight lease, and the request payload counted
//! against the route's largest body while it streams.

use std::cell::Cell;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tollgate::engine::Refusal;
use tollgate::{ConnectionLease, HeaderOptions};

pin_project! {
    /// The body of an admitted request's response: the inner service's body, holding the request's
    /// in-flight lease (when its route has an in-flight limit) until the body is finished or
    /// dropped — a client that stops reading a streamed response holds its place until then.
    pub struct ResponseBody<B> {
        #[pin]
        body: B,
        lease: Option<ConnectionLease>,
    }
}

impl<B> ResponseBody<B> {
    #[inline]
    pub(crate) fn new(body: B, lease: Option<ConnectionLease>) -> Self {
        Self { body, lease }
    }

    /// The inner body, and the lease it holds.
    pub fn into_parts(self) -> (B, Option<ConnectionLease>) {
        (self.body, self.lease)
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").field("lease", &self.lease).finish_non_exhaustive()
    }
}

impl<B: MessageBody> MessageBody for ResponseBody<B> {
    type Error = B::Error;

    #[inline]
    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let chunk = this.body.poll_next(cx);
        if matches!(chunk, Poll::Ready(None | Some(Err(_)))) {
            // Finished: give the in-flight place back now, not when actix drops the body.
            this.lease.take();
        }
        chunk
    }

    /// A body of bytes known up front (most handlers' answers) is written out in one piece, as
    /// it would be without the middleware; with a lease to hold, the body is polled instead, so
    /// that the lease lives until it is sent.
    #[inline]
    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self.lease {
            None => self.body.try_into_bytes().map_err(|body| ResponseBody { body, lease: None }),
            lease => Err(ResponseBody { body: self.body, lease }),
        }
    }
}

/// The route's largest body for one request's payload, shared by the payload, which marks it
/// overflowed, and the response future, which then answers the core's 413 in place of whatever
/// the handler made of the cut-off body (an `Rc`: both live on the request's worker).
#[derive(Debug)]
pub(crate) struct BodyLimit {
    max: u64,
    over: Cell<bool>,
    options: HeaderOptions,
}

impl BodyLimit {
    pub(crate) fn new(max: u64, options: &HeaderOptions) -> Rc<Self> {
        Rc::new(Self { max, over: Cell::new(false), options: *options })
    }

    /// The core's 413 once the body turned out longer than the largest body: the same answer as
    /// for a declared length over it.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.over.get().then(|| Refusal::body_too_large(&self.options, self.max))
    }
}

pin_project! {
    /// A request payload cut off past the route's largest body: the read that passes it is
    /// `PayloadError::Overflow`, the payload ends after it, and the response is the core's 413
    /// whatever the handler answers — also from a handler that skips read errors and takes the
    /// end for the whole body (an error on every later read would spin a handler that skips
    /// errors without stopping, e.g. `filter_map(Result::ok)`, on the worker forever).
    pub(crate) struct LimitedPayload<S> {
        #[pin]
        inner: S,
        remaining: u64,
        limit: Rc<BodyLimit>,
    }
}

impl<S> LimitedPayload<S> {
    pub(crate) fn new(inner: S, limit: Rc<BodyLimit>) -> Self {
        Self { inner, remaining: limit.max, limit }
    }
}

impl<S: Stream<Item = Result<Bytes, PayloadError>>> Stream for LimitedPayload<S> {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if this.limit.over.get() {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                if len > *this.remaining {
                    this.limit.over.set(true);
                    tracing::debug!("request body over the route's largest body");
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                *this.remaining -= len;
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.limit.over.get() { (0, None) } else { self.inner.size_hint() }
    }
}
