//! How the middleware passes bodies on: wrapped in its own types (any body), or as axum's `Body`.

use bytes::Bytes;
use http::Request;
#[cfg(feature = "axum")]
use http_body::Body;
use http_body_util::{Full, Limited};
use tollgate::ConnectionLease;

use super::body::ResponseBody;

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

    /// The request body, counted against `max` bytes when the route has a largest body.
    #[doc(hidden)]
    fn request(body: B, max: Option<u64>) -> Self::Request;

    /// The body's exact length, when its type can tell.
    #[doc(hidden)]
    #[inline]
    fn exact_len(_body: &B) -> Option<u64> {
        None
    }

    /// The request with its body passed on by [`RequestBodies::request`].
    #[doc(hidden)]
    #[inline(always)]
    fn pass_on(request: Request<B>, max: Option<u64>) -> Request<Self::Request> {
        request.map(|body| Self::request(body, max))
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

/// Any body type: the request body as [`Limited<B>`](http_body_util::Limited), the response body as
/// [`ResponseBody<R>`]. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrapped;

impl sealed::Sealed for Wrapped {}

impl Bodies for Wrapped {}

impl<B> RequestBodies<B> for Wrapped {
    type Request = Limited<B>;

    #[inline]
    fn request(body: B, max: Option<u64>) -> Limited<B> {
        Limited::new(body, max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)))
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
/// the request body on a route with a largest body, the response body of a request holding an
/// in-flight lease — so on other routes axum has no wrapper to box: two allocations fewer per
/// request than [`Wrapped`] inside an axum `Router`.
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
    fn request(body: B, max: Option<u64>) -> axum::body::Body {
        match max {
            // `Body::new` keeps a `Body` as it is.
            None => axum::body::Body::new(body),
            Some(max) => axum::body::Body::new(<Wrapped as RequestBodies<B>>::request(body, Some(max))),
        }
    }

    #[inline]
    fn exact_len(body: &B) -> Option<u64> {
        body.size_hint().exact()
    }

    /// A request that already has axum's `Body` and no largest body to count is passed on as it
    /// is, as `Body::new` passes on a body (a downcast): `Request::map` would move its parts twice
    /// (about 30 instructions per request, measured).
    #[inline(always)]
    fn pass_on(request: Request<B>, max: Option<u64>) -> Request<axum::body::Body> {
        let mut slot = Some(request);
        if max.is_none()
            && let Some(same) =
                (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Request<axum::body::Body>>>()
            && let Some(same) = same.take()
        {
            return same;
        }
        match slot {
            Some(request) => request.map(|body| Self::request(body, max)),
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
