//! The bodies: the response body holding the in-flight lease, and the request payload counted
//! while it streams (the route's largest body, the body bytes of a payload of unknown length).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::body::{BodySize, MessageBody};
use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tollgate::engine::{BodyCharge, BodyCounter, ReadError, Refusal};
use tollgate::{ConnectionLease, HeaderOptions};

use super::transform::{RefusalHook, respond};

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

/// Where a payload counted while it streams leaves the refusal that cut it off, for the response
/// future, which then answers it in place of whatever the handler made of the cut-off payload
/// (an `Rc`: both live on the request's worker).
pub(crate) struct CutOff {
    refusal: Cell<Option<Box<Refusal>>>,
    hook: Option<RefusalHook>,
}

impl fmt::Debug for CutOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CutOff").finish_non_exhaustive()
    }
}

impl CutOff {
    /// The response to a payload cut off, when it was: the core's refusal (the same 413 as for
    /// a declared length over the largest body; the body-bytes limit's 429), through the refusal
    /// hook.
    pub(crate) fn refused(&self) -> Option<HttpResponse> {
        let refusal = self.refusal.take()?;
        Some(respond(&refusal, self.hook.as_ref()))
    }
}

/// The core's timer for the delay action: tokio's (actix-web runs on tokio).
fn sleep(wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(tokio::time::sleep(wait))
}

pin_project! {
    /// A request payload counted while it streams by the core's [`BodyCounter`]: cut off past
    /// the route's largest body (`PayloadError::Overflow`) and, when its length was not known up
    /// front (a chunked upload), charged to the route's body-bytes limit chunk by chunk as the
    /// handler reads it (`PayloadError::Io` when the limit refuses a chunk) — so a payload costs
    /// what it turns out to be. The payload ends after its error, and the response is the
    /// core's refusal whatever the handler answers — also from a handler that skips read errors
    /// and takes the end for the whole body (an error on every later read would spin a handler
    /// that skips errors without stopping, e.g. `filter_map(Result::ok)`, on the worker forever).
    pub(crate) struct LimitedPayload<S> {
        #[pin]
        inner: S,
        counter: BodyCounter,
        cut_off: Rc<CutOff>,
    }
}

impl<S> LimitedPayload<S> {
    /// `inner` counted by a counter of `max_body` and `charge` (the engine's plan), its refusal
    /// left in the returned [`CutOff`] (rendered through `hook`). `Err(inner)` on a route
    /// without body limits: the payload is passed on as it is.
    pub(crate) fn new(
        inner: S,
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
        options: &HeaderOptions,
        hook: Option<&RefusalHook>,
    ) -> Result<(Self, Rc<CutOff>), S> {
        let Some(counter) = BodyCounter::new(max_body, charge, options, sleep) else { return Err(inner) };
        let cut_off = Rc::new(CutOff { refusal: Cell::new(None), hook: hook.cloned() });
        Ok((Self { inner, counter, cut_off: Rc::clone(&cut_off) }, cut_off))
    }
}

impl<S: Stream<Item = Result<Bytes, PayloadError>>> Stream for LimitedPayload<S> {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let len = |chunk: &Bytes| u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let read = ready!(this.counter.poll_read(cx, |cx| this.inner.poll_next(cx), len));
        Poll::Ready(read.map(|read| {
            read.map_err(|err| match err {
                ReadError::Body(err) => err,
                ReadError::CutOff(refusal) => cut(this.cut_off, refusal),
            })
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.counter.is_cut_off() { (0, Some(0)) } else { self.inner.size_hint() }
    }
}

/// Leaves `refusal` for the response future: the handler's read gets the payload error actix
/// has for it.
#[cold]
fn cut(cut_off: &CutOff, refusal: Box<Refusal>) -> PayloadError {
    tracing::debug!(status = %refusal.status(), "request body cut off while it streamed");
    let error = if refusal.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        PayloadError::Overflow
    } else {
        let message = format!("request body refused by its body-bytes limit ({})", refusal.status());
        PayloadError::Io(std::io::Error::other(message))
    };
    cut_off.refusal.set(Some(refusal));
    error
}
