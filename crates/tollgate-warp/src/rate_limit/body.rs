//! The bodies: the request body counted while it streams (the route's largest body, the body
//! bytes of a body of unknown length), and the response body holding the request's in-flight
//! lease.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::engine::{BodyCharge, BodyCounter, ReadError, Refusal};
use tollgate::{ConnectionLease, HeaderOptions};

use super::config::{RefusalHook, respond};

/// The error type request bodies are passed on with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request body counted while it streams and its response future meet: the core's
/// [`BodyCounter`], which decides for each part, and the refusal the body leaves when it cuts
/// itself off, which the future answers with instead of the application's response. Only on
/// routes with body limits.
pub(crate) struct BodyMeter {
    hook: Option<RefusalHook>,
    // Locked by the body for each part it reads, and by the response future once.
    progress: Mutex<Progress>,
}

/// How far a body counted while it streams got.
struct Progress {
    counter: BodyCounter,
    /// The refusal it was cut off with, until the response future takes it.
    refusal: Option<Box<Refusal>>,
}

impl fmt::Debug for BodyMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("BodyMeter");
        // Not waiting for the body's reader to show how far it got.
        if let Ok(progress) = self.progress.try_lock() {
            debug.field("counter", &progress.counter);
        }
        debug.finish_non_exhaustive()
    }
}

impl BodyMeter {
    /// The meter of a body admitted with `max_body` and `charge` (the engine's plan), refusals
    /// rendered in the `options` style and through `hook`. `None` (nothing allocated) on a
    /// route without body limits.
    #[inline(always)]
    pub(crate) fn of(
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
        options: &HeaderOptions,
        hook: Option<&RefusalHook>,
    ) -> Option<Arc<Self>> {
        if max_body.is_none() && charge.is_none() {
            return None;
        }
        Self::new(max_body, charge, options, hook)
    }

    #[inline(never)]
    fn new(
        max_body: Option<u64>,
        charge: Option<BodyCharge>,
        options: &HeaderOptions,
        hook: Option<&RefusalHook>,
    ) -> Option<Arc<Self>> {
        let counter = BodyCounter::new(max_body, charge, options, sleep)?;
        Some(Arc::new(Self { hook: hook.cloned(), progress: Mutex::new(Progress { counter, refusal: None }) }))
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The response to a body cut off, when it was: the core's refusal, through the refusal hook.
    pub(crate) fn refused(&self) -> Option<Response<Full<Bytes>>> {
        let refusal = self.progress().refusal.take()?;
        Some(respond(&refusal, self.hook.as_ref()))
    }
}

impl Progress {
    /// Cuts the body off: `refusal` kept for the response, the error for the reader.
    #[cold]
    fn cut_off(&mut self, refusal: Box<Refusal>) -> BoxError {
        let error: BoxError = match self.counter.passed_max_body() {
            Some(max) => Box::new(BodyTooLarge { max }),
            None => Box::new(BodyRefused { status: refusal.status() }),
        };
        self.refusal.get_or_insert(refusal);
        error
    }
}

/// The bytes of data a frame carries (none in trailers).
fn data_len<D: Buf>(frame: &Frame<D>) -> u64 {
    frame.data_ref().map_or(0, |data| u64::try_from(data.remaining()).unwrap_or(u64::MAX))
}

/// The core's timer for the delay action: tokio's.
fn sleep(wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(tokio::time::sleep(wait))
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

/// A request body whose next part the route's body-bytes limit refused (429 over the budget;
/// 413 for more than it can ever admit; or its policy's answer to a failed store): the error
/// its reader gets.
#[derive(Debug)]
pub struct BodyRefused {
    status: StatusCode,
}

impl BodyRefused {
    /// The status of the refusal the client gets instead of the application's response.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body refused by its body-bytes limit ({})", self.status)
    }
}

impl std::error::Error for BodyRefused {}

pin_project! {
    /// The request body the warp filter gets: the client's body, counted while it streams
    /// against the route's largest body and, when its length was not known up front (a chunked
    /// upload, an HTTP/2 request without `Content-Length`), charged to the route's body-bytes
    /// limit part by part as it is read — so a body costs what it turns out to be, nothing when
    /// it has none. A body that passes either limit is cut off with a [`BodyTooLarge`] or
    /// [`BodyRefused`] error, and the response is the core's refusal (413, or 429 with the
    /// rate-limit headers) whatever the filter made of the error. On other routes, the client's
    /// body as it is.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        meter: Option<Arc<BodyMeter>>,
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").field("meter", &self.meter).finish_non_exhaustive()
    }
}

impl<B> RequestBody<B> {
    /// `inner`, counted against `meter`'s limits (passed on as it is without).
    #[inline(always)]
    pub(crate) fn new(inner: B, meter: Option<Arc<BodyMeter>>) -> Self {
        Self { inner, meter }
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
        let Some(meter) = this.meter.as_deref() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        let mut progress = meter.progress();
        let read = ready!(progress.counter.poll_read(cx, |cx| this.inner.poll_frame(cx), data_len));
        Poll::Ready(read.map(|read| {
            read.map_err(|err| match err {
                ReadError::Body(err) => err.into(),
                ReadError::CutOff(refusal) => progress.cut_off(refusal),
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        match &self.meter {
            None => self.inner.is_end_stream(),
            Some(meter) => {
                let progress = meter.progress();
                progress.counter.is_cut_off() || (!progress.counter.is_pending() && self.inner.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.meter {
            Some(meter) if meter.progress().counter.is_cut_off() => SizeHint::with_exact(0),
            _ => self.inner.size_hint(),
        }
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

    fn meter(max: u64) -> Arc<BodyMeter> {
        BodyMeter::of(Some(max), None, &HeaderOptions::default(), None).unwrap()
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_largest_passes_one_byte_more_is_cut_off() {
        let fits = meter(6);
        let body = RequestBody::new(chunks(&[b"abc", b"def"]), Some(Arc::clone(&fits)));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        assert!(fits.refused().is_none());

        let over = meter(6);
        let mut body = RequestBody::new(chunks(&[b"abc", b"defg", b"h"]), Some(Arc::clone(&over)));
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTooLarge>().map(BodyTooLarge::max), Some(6));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "ended after its error, not repeating it");
        let refused = over.refused().expect("the response future learns of it");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);

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
