//! How the middleware passes bodies on: wrapped in its own types (any body), or as axum's `Body`.

// The traits' hidden methods take the middleware's own `BodyMeter`: they are its plumbing, and
// the traits are sealed, so no other crate implements them (nor can it make a meter to call one).
#![allow(private_interfaces)]

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
#[cfg(feature = "axum")]
use http_body::Body;
use http_body_util::Full;
use tollgate::ConnectionLease;

use super::body::{BodyMeter, RequestBody, ResponseBody};

/// The error type bodies are boxed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod sealed {
    pub trait Sealed {}
}

/// How [`RateLimit`](super::RateLimit) passes bodies on: [`Wrapped`] (the default, for any body
/// type) or, with the `axum` feature, [`AxumBody`] (see
/// [`RateLimitLayer::axum_body`](super::RateLimitLayer::axum_body)). Its two halves say what the
/// inner service gets as the request body ([`RequestBodies`]) and what the middleware answers
/// with ([`ResponseBodies`]).
pub trait Bodies: sealed::Sealed + Send + Sync + 'static {}

/// The request half of [`Bodies`], for request bodies of type `B`.
pub trait RequestBodies<B>: Bodies {
    /// The request body the inner service gets.
    type Request;

    /// The request body, counted while it streams against `meter`'s limits when the route has
    /// body limits.
    #[doc(hidden)]
    fn request(body: B, meter: Option<Arc<BodyMeter>>) -> Self::Request;

    /// The body's exact length, when its type can tell.
    #[doc(hidden)]
    #[inline]
    fn exact_len(_body: &B) -> Option<u64> {
        None
    }

    /// The request with its body passed on by [`RequestBodies::request`].
    #[doc(hidden)]
    #[inline(always)]
    fn pass_on(request: Request<B>, meter: Option<Arc<BodyMeter>>) -> Request<Self::Request> {
        request.map(|body| Self::request(body, meter))
    }
}

/// The response half of [`Bodies`], for the inner service's response bodies of type `R`.
pub trait ResponseBodies<R>: Bodies {
    /// The response body.
    type Response;

    /// The inner service's response body, holding `lease` (an in-flight place) until it ends.
    #[doc(hidden)]
    fn response(body: R, lease: Option<ConnectionLease>) -> Self::Response;

    /// A refusal's body.
    #[doc(hidden)]
    fn refusal(body: Full<Bytes>) -> Self::Response;
}

/// Any body type: the request body as [`RequestBody<B>`](super::RequestBody) (counted while it
/// streams, on routes with body limits), the response body as [`ResponseBody<R>`]. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrapped;

impl sealed::Sealed for Wrapped {}

impl Bodies for Wrapped {}

impl<B> RequestBodies<B> for Wrapped {
    type Request = RequestBody<B>;

    #[inline]
    fn request(body: B, meter: Option<Arc<BodyMeter>>) -> RequestBody<B> {
        RequestBody::new(body, meter)
    }
}

impl<R> ResponseBodies<R> for Wrapped {
    type Response = ResponseBody<R>;

    #[inline]
    fn response(body: R, lease: Option<ConnectionLease>) -> ResponseBody<R> {
        ResponseBody::inner(body, lease)
    }

    #[inline]
    fn refusal(body: Full<Bytes>) -> ResponseBody<R> {
        ResponseBody::full(body)
    }
}

/// axum's [`Body`](axum::body::Body) in and out. A body is wrapped only where a route needs it —
/// the request body in a [`RequestBody`](super::RequestBody) on a route with body limits, the
/// response body of a request holding an in-flight lease — so on other routes axum has no
/// wrapper to box: two allocations fewer per request than [`Wrapped`] inside an axum `Router`.
#[cfg(feature = "axum")]
#[derive(Clone, Copy, Debug, Default)]
pub struct AxumBody;

#[cfg(feature = "axum")]
impl sealed::Sealed for AxumBody {}

#[cfg(feature = "axum")]
impl Bodies for AxumBody {}

#[cfg(feature = "axum")]
impl<B> RequestBodies<B> for AxumBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Request = axum::body::Body;

    #[inline]
    fn request(body: B, meter: Option<Arc<BodyMeter>>) -> axum::body::Body {
        match meter {
            // `Body::new` keeps a `Body` as it is.
            None => axum::body::Body::new(body),
            meter => axum::body::Body::new(RequestBody::new(body, meter)),
        }
    }

    #[inline]
    fn exact_len(body: &B) -> Option<u64> {
        body.size_hint().exact()
    }

    /// A request that already has axum's `Body` and no body limits to count is passed on as it
    /// is, as `Body::new` passes on a body (a downcast): `Request::map` would move its parts twice
    /// (about 30 instructions per request, measured).
    #[inline(always)]
    fn pass_on(request: Request<B>, meter: Option<Arc<BodyMeter>>) -> Request<axum::body::Body> {
        let mut slot = Some(request);
        if meter.is_none()
            && let Some(same) =
                (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Request<axum::body::Body>>>()
            && let Some(same) = same.take()
        {
            return same;
        }
        match slot {
            Some(request) => request.map(|body| Self::request(body, meter)),
            // The downcast took the request only where it returned it.
            None => Request::new(axum::body::Body::empty()),
        }
    }
}

#[cfg(feature = "axum")]
impl<R> ResponseBodies<R> for AxumBody
where
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Response = axum::body::Body;

    #[inline]
    fn response(body: R, lease: Option<ConnectionLease>) -> axum::body::Body {
        match lease {
            None => axum::body::Body::new(body),
            lease => axum::body::Body::new(ResponseBody::inner(body, lease)),
        }
    }

    fn refusal(body: Full<Bytes>) -> axum::body::Body {
        axum::body::Body::new(body)
    }
}
