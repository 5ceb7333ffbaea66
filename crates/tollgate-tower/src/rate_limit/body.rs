//! The bodies: the request body counted while it streams, and the response body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate::engine::{BodyCharge, ChargeFuture, Refusal};
use tollgate::{ConnectionLease, HeaderOptions};

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

/// Where a request body counted while it streams and its response future meet: the limits the
/// body is counted against, and the refusal it leaves when it cuts itself off, which the future
/// answers with instead of the inner service's response. Only on routes with body limits.
pub(crate) struct BodyMeter {
    max: Option<u64>,
    charge: Option<BodyCharge>,
    options: HeaderOptions,
    hook: Option<RefusalHook>,
    refusal: Mutex<Option<Box<Refusal>>>,
}

impl fmt::Debug for BodyMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyMeter").field("max", &self.max).field("charge", &self.charge).finish_non_exhaustive()
    }
}

impl BodyMeter {
    pub(crate) fn new(
        max: Option<u64>,
        charge: Option<BodyCharge>,
        options: HeaderOptions,
        hook: Option<RefusalHook>,
    ) -> Self {
        Self { max, charge, options, hook, refusal: Mutex::new(None) }
    }

    /// Keeps the body's refusal for the response (the first, should there be more).
    fn refuse(&self, refusal: Box<Refusal>) {
        let mut slot = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(refusal);
    }

    /// The response to a body cut off, when it was: the core's refusal, through the refusal hook.
    pub(crate) fn refused(&self) -> Option<Response<Full<Bytes>>> {
        let refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(response(&refusal, self.hook.as_ref()))
    }
}

/// What a body counted while it streams finishes before it reads on: a part's charge still
/// being decided (a store with I/O), or the delay action's wait after it.
enum Pending {
    Charge(ChargeFuture),
    Wait(Pin<Box<tokio::time::Sleep>>),
}

pin_project! {
    /// The request body the inner service gets ([`Wrapped`](super::Wrapped); and
    /// [`AxumBody`](super::Bodies) on routes with body limits): the client's body, counted
    /// while it streams against the route's largest body and, when its length was not known
    /// up front (an HTTP/2 upload or gRPC call without `Content-Length`), charged to the route's
    /// body-bytes limit part by part as it is read — so a body costs what it turns out to be,
    /// nothing when the service reads none. A body that passes either limit is cut off with a
    /// [`BodyError`], and the response is the core's refusal (413, or 429 with the rate-limit
    /// headers) instead of what the service made of the error. On other routes, the client's
    /// body as it is.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        meter: Option<Arc<BodyMeter>>,
        read: u64,
        // In a `Mutex` only so that the body is `Sync` where `B` is, as tower-http's and
        // http-body-util's bodies are: it is reached through `get_mut`, never locked.
        pending: Option<Mutex<Pending>>,
        cut_off: bool,
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").field("meter", &self.meter).field("read", &self.read).finish_non_exhaustive()
    }
}

impl<B> RequestBody<B> {
    /// `inner`, counted against `meter`'s limits (passed on as it is without).
    #[inline(always)]
    pub(crate) fn new(inner: B, meter: Option<Arc<BodyMeter>>) -> Self {
        Self { inner, meter, read: 0, pending: None, cut_off: false }
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
        if *this.cut_off {
            // Ended after its error, not repeating it: a reader that skips errors must not spin.
            return Poll::Ready(None);
        }
        // The last part's charge is decided before anything more is read, its end included: a
        // body over its budget never ends cleanly.
        if let Err(refusal) = ready!(poll_pending(this.pending, cx)) {
            return Poll::Ready(Some(Err(charge_refused(meter, refusal, this.cut_off))));
        }
        let frame = match ready!(this.inner.poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            Some(Ok(frame)) => frame,
        };
        let Some(data) = frame.data_ref() else { return Poll::Ready(Some(Ok(frame))) };
        let len = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
        *this.read = this.read.saturating_add(len);
        if let Some(max) = meter.max
            && *this.read > max
        {
            let refusal = Box::new(Refusal::body_too_large(&meter.options, max));
            return Poll::Ready(Some(Err(cut_off(meter, refusal, BodyError::TooLarge { max }, this.cut_off))));
        }
        if let Some(charge) = &meter.charge {
            let pending = match charge.try_charge_now(len) {
                Some(Ok(wait)) if wait.is_zero() => None,
                Some(Ok(wait)) => Some(Pending::Wait(Box::pin(tokio::time::sleep(wait)))),
                Some(Err(refusal)) => return Poll::Ready(Some(Err(charge_refused(meter, refusal, this.cut_off)))),
                None => Some(Pending::Charge(charge.charge(len))),
            };
            // Decided on the next poll: this part goes on now.
            *this.pending = pending.map(Mutex::new);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.cut_off || (self.pending.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.cut_off { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

/// Finishes what is pending: `Ok` when the body may read on.
fn poll_pending(slot: &mut Option<Mutex<Pending>>, cx: &mut Context<'_>) -> Poll<Result<(), Box<Refusal>>> {
    while let Some(pending) = slot {
        let next = match pending.get_mut().unwrap_or_else(PoisonError::into_inner) {
            Pending::Charge(charge) => match ready!(charge.as_mut().poll(cx)) {
                Ok(wait) if wait.is_zero() => None,
                Ok(wait) => Some(Pending::Wait(Box::pin(tokio::time::sleep(wait)))),
                Err(refusal) => {
                    *slot = None;
                    return Poll::Ready(Err(refusal));
                }
            },
            Pending::Wait(sleep) => {
                ready!(sleep.as_mut().poll(cx));
                None
            }
        };
        *slot = next.map(Mutex::new);
    }
    Poll::Ready(Ok(()))
}

/// Cuts the body off: `refusal` kept for the response, `error` for the reader.
#[cold]
fn cut_off(meter: &BodyMeter, refusal: Box<Refusal>, error: BodyError, cut: &mut bool) -> BoxError {
    *cut = true;
    meter.refuse(refusal);
    Box::new(error)
}

/// [`cut_off`] by the body-bytes limit's `refusal`.
fn charge_refused(meter: &BodyMeter, refusal: Box<Refusal>, cut: &mut bool) -> BoxError {
    let status = refusal.status();
    cut_off(meter, refusal, BodyError::Refused { status }, cut)
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
    use tollgate::engine::{Engine, Limits};
    use tollgate::request::HttpView;
    use tollgate::{KeyKind, Limit, Policy};

    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin + use<> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn meter(max: Option<u64>, charge: Option<BodyCharge>) -> Arc<BodyMeter> {
        Arc::new(BodyMeter::new(max, charge, HeaderOptions::default(), None))
    }

    /// The charge of an HTTP/2 request of unknown length on a route with 10 bytes a day.
    fn ten_bytes_a_day() -> BodyCharge {
        let policy = Policy::builder("body_bytes")
            .limit(Limit::new("body_bytes", "10/day".parse().unwrap()).key(KeyKind::ip()))
            .build()
            .unwrap();
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
}
