//! The bodies: the request body counted while it streams, and the response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::ConnectionLease;
use tollgate::engine::{BodyCounter, ReadError, Refusal};

use super::bodies::BoxError;
use super::layer::{RefusalHook, response};

/// Why [`RequestBody`] cut a request body off: what the inner service's read of it fails with.
/// The middleware then answers with the core's refusal, whatever the service made of the error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body passed the route's largest body (413).
    #[error("request body over the limit of {max} bytes")]
    TooLarge {
        /// The largest body the route takes, in bytes.
        max: u64,
    },
    /// The route's body-bytes limit refused the body's next part (429 over the budget; 413 for
    /// more than it can ever admit; or its policy's answer to a failed store).
    #[error("request body refused by its body-bytes limit ({status})")]
    Refused {
        /// The status of the refusal the middleware answers with.
        status: StatusCode,
    },
}

/// Where a request body counted while it streams and its response future meet: the core's
/// [`BodyCounter`], which decides for each part, and the refusal the body leaves when it cuts
/// itself off, which the future answers with instead of the inner service's response. Only on
/// routes with body limits: the body on other routes carries none, and is no larger than the
/// client's body and a pointer.
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
    pub(crate) fn new(counter: BodyCounter, hook: Option<RefusalHook>) -> Self {
        Self { hook, progress: Mutex::new(Progress { counter, refusal: None }) }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The response to a body cut off, when it was: the core's refusal, through the refusal hook.
    pub(crate) fn refused(&self) -> Option<Response<Full<Bytes>>> {
        let refusal = self.progress().refusal.take()?;
        Some(response(&refusal, self.hook.as_ref()))
    }
}

impl Progress {
    /// Cuts the body off: `refusal` kept for the response, the error for the reader.
    #[cold]
    fn cut_off(&mut self, refusal: Box<Refusal>) -> BoxError {
        let error = match self.counter.passed_max_body() {
            Some(max) => BodyError::TooLarge { max },
            None => BodyError::Refused { status: refusal.status() },
        };
        self.refusal.get_or_insert(refusal);
        Box::new(error)
    }
}

/// The bytes of data a frame carries (none in trailers).
fn data_len<D: Buf>(frame: &Frame<D>) -> u64 {
    frame.data_ref().map_or(0, |data| u64::try_from(data.remaining()).unwrap_or(u64::MAX))
}

/// The core's timer for the delay action: tokio's.
pub(crate) fn sleep(wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(tokio::time::sleep(wait))
}

pin_project! {
    /// The request body the inner service gets ([`Wrapped`](super::Wrapped); and
    /// [`AxumBody`](super::Bodies) on routes with body limits): the client's body, counted
    /// while it streams against the route's largest body and, when its length was not known
    /// up front (an HTTP/2 upload or gRPC call without `Content-Length`), charged to the route's
    /// body-bytes limit part by part as it is read — so a body costs what it turns out to be,
    /// nothing when the service reads none. A body that passes either limit is cut off with a
    /// [`BodyError`], and when the service answers after that (as a handler that takes the
    /// whole body does), the response is the core's refusal (413, or 429 with the rate-limit
    /// headers) instead of what the service made of the error. On other routes, the client's
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Empty, StreamBody};
    use tollgate::HeaderOptions;
    use tollgate::engine::{BodyCharge, Engine, Limits};
    use tollgate::request::HttpView;
    use tollgate::{KeyKind, Limit, Policy};

    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin + use<> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn meter(max: Option<u64>, charge: Option<BodyCharge>) -> Arc<BodyMeter> {
        let counter = BodyCounter::new(max, charge, &HeaderOptions::default(), sleep).expect("something to count");
        Arc::new(BodyMeter::new(counter, None))
    }

    /// The charge of an HTTP/2 request of unknown length on a route with 10 bytes a day.
    fn ten_bytes_a_day() -> BodyCharge {
        charge_of(Limit::new("body_bytes", "10/day".parse().unwrap()))
    }

    /// The charge of an HTTP/2 request of unknown length on a route whose body bytes `limit`
    /// counts per client address.
    fn charge_of(limit: Limit) -> BodyCharge {
        let policy = Policy::builder("body_bytes").limit(limit.key(KeyKind::ip())).build().unwrap();
        let engine = Engine::new(Limits::new().body_bytes(policy));
        let mut request = http::Request::post("/").version(http::Version::HTTP_2).body(()).unwrap();
        request.extensions_mut().insert("192.0.2.1:4000".parse::<SocketAddr>().unwrap());
        let view = HttpView::<_>::of(&request, || None).counting_body();
        engine.check_now(engine.limits_for(&view), &view).unwrap().body_bytes.expect("charged as it streams")
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_largest_passes_one_byte_more_is_cut_off() {
        let fits = meter(Some(6), None);
        let body = RequestBody::new(chunks(&[b"abc", b"def"]), Some(Arc::clone(&fits)));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        assert!(fits.refused().is_none());

        let over = meter(Some(6), None);
        let mut body = RequestBody::new(chunks(&[b"abc", b"defg", b"h"]), Some(Arc::clone(&over)));
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err.downcast_ref::<BodyError>(), Some(BodyError::TooLarge { max: 6 })), "{err}");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "ended after its error, not repeating it");
        let refused = over.refused().expect("the response future learns of it");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            refused.into_body().collect().await.unwrap().to_bytes(),
            r#"{"error":"payload_too_large","limit":6}"#
        );

        let unlimited = RequestBody::new(chunks(&[b"abc", b"defg"]), None);
        assert_eq!(unlimited.collect().await.unwrap().to_bytes().len(), 7);
    }

    #[tokio::test]
    async fn parts_are_charged_as_they_are_read() {
        let charge = ten_bytes_a_day();
        // No body: nothing charged, all 10 bytes left.
        let empty = RequestBody::new(Empty::<Bytes>::new(), Some(meter(None, Some(charge.clone()))));
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
        let counted = meter(None, Some(charge.clone()));
        let mut body = RequestBody::new(chunks(&[b"abcd", b"efgh", b"ijk"]), Some(Arc::clone(&counted)));
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(
            matches!(err.downcast_ref::<BodyError>(), Some(BodyError::Refused { status }) if *status == 429),
            "{err}"
        );
        let refused = counted.refused().expect("the response future learns of it");
        assert_eq!(
            (refused.status(), refused.headers()["x-ratelimit-remaining"].to_str().unwrap()),
            (StatusCode::TOO_MANY_REQUESTS, "2")
        );
        // The refused part was not charged: the 2 bytes left still pass.
        assert_eq!(charge.try_charge_now(2).unwrap().unwrap(), std::time::Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_a_delaying_budget_admits_later_holds_the_body_back() {
        let delay = tollgate::OnExceed::Delay { max_wait: std::time::Duration::from_secs(5) };
        let charge = charge_of(Limit::new("body_bytes", "10/s".parse().unwrap()).on_exceed(delay));
        let body = RequestBody::new(chunks(&[b"0123456789", b"abcde", b"f"]), Some(meter(None, Some(charge))));
        let started = tokio::time::Instant::now();
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 16);
        // 10 bytes a second, 10 at once: the last 6 bytes wait 0.6 s for room (nothing refused).
        assert!(started.elapsed() >= std::time::Duration::from_millis(500), "{:?}", started.elapsed());
    }
}
