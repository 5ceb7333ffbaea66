//! The bodies: the request body counted against the route's largest body while it streams, and
//! the response body holding the request's in-flight lease.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::{ConnectionLease, HeaderOptions};

/// The error type request bodies are passed on with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request body tells the response future that it went over the route's largest body:
/// the future then answers 413 whatever the application made of the error.
#[derive(Debug)]
pub(crate) struct Overflow {
    hit: AtomicBool,
    pub(crate) max: u64,
    /// The style the 413 renders in.
    pub(crate) options: HeaderOptions,
}

impl Overflow {
    pub(crate) fn new(max: u64, options: HeaderOptions) -> Arc<Self> {
        Arc::new(Self { hit: AtomicBool::new(false), max, options })
    }

    pub(crate) fn hit(&self) -> bool {
        self.hit.load(Ordering::Acquire)
    }
}

/// A request body over the route's largest body: the error its reader gets.
#[derive(Debug)]
pub struct BodyTooLarge {
    max: u64,
}

impl BodyTooLarge {
    /// The largest body the route takes, in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body over the limit of {} bytes", self.max)
    }
}

impl std::error::Error for BodyTooLarge {}

pin_project! {
    /// The request body the warp filter gets: the client's body, cut off with a [`BodyTooLarge`]
    /// error once it passes the route's largest body (the response is then the 413 refusal).
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        overflow: Option<Arc<Overflow>>,
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").field("remaining", &self.remaining).finish_non_exhaustive()
    }
}

impl<B> RequestBody<B> {
    /// `inner`, counted against `overflow.max` bytes when there is a largest body.
    #[inline(always)]
    pub(crate) fn new(inner: B, overflow: Option<Arc<Overflow>>) -> Self {
        let remaining = overflow.as_ref().map_or(u64::MAX, |o| o.max);
        Self { inner, remaining, overflow }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
            match this.remaining.checked_sub(len) {
                Some(left) => *this.remaining = left,
                None => {
                    *this.remaining = 0;
                    let max = this.overflow.as_ref().map_or(0, |o| o.max);
                    if let Some(overflow) = this.overflow.as_ref() {
                        overflow.hit.store(true, Ordering::Release);
                    }
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge { max }))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The body of [`RateLimitService`](crate::RateLimitService)'s responses: a refusal's bytes, or
    /// the application's body holding the request's in-flight lease until it is finished or
    /// dropped.
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

    #[inline]
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

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Inner { body, lease } => {
                let frame = body.poll_frame(cx);
                if lease.is_some() && matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    // Finished: give the in-flight place back now, not when hyper drops the body.
                    lease.take();
                }
                frame
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { body } => body.is_end_stream(),
            Kind::Inner { body, .. } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { body } => body.size_hint(),
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::pin::pin;

    use http_body_util::{BodyExt, StreamBody};
    use tollgate::{ConcurrencyLimiter, Key};

    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin + use<> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_largest_passes_one_byte_more_is_cut_off() {
        let overflow = Overflow::new(6, HeaderOptions::default());
        let body = RequestBody::new(chunks(&[b"abc", b"def"]), Some(Arc::clone(&overflow)));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        assert!(!overflow.hit());

        let overflow = Overflow::new(6, HeaderOptions::default());
        let body = RequestBody::new(chunks(&[b"abc", b"defg"]), Some(Arc::clone(&overflow)));
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTooLarge>().map(BodyTooLarge::max), Some(6));
        assert!(overflow.hit(), "the response future learns of it");

        let unlimited = RequestBody::new(chunks(&[b"abc", b"defg"]), None);
        assert_eq!(unlimited.collect().await.unwrap().to_bytes().len(), 7);
    }

    #[tokio::test]
    async fn the_response_body_gives_its_lease_back_at_its_end() {
        let limiter = ConcurrencyLimiter::new("in_flight").per_key(1);
        let lease = limiter.try_acquire(Key::Global).unwrap();
        let mut body = pin!(ResponseBody::inner(chunks(&[b"one", b"two"]), Some(lease)));
        assert!(body.as_mut().frame().await.is_some());
        assert_eq!(limiter.in_use(), 1, "held while the body streams");
        assert!(body.as_mut().frame().await.is_some());
        assert!(body.as_mut().frame().await.is_none());
        assert_eq!(limiter.in_use(), 0, "released at the end, before the body is dropped");
    }
}
