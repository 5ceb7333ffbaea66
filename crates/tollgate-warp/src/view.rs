//! The core's view of an [`http::Request`] on its way to the warp filter: what the engine asks of
//! a request, read lazily from its parts and extensions.

use std::net::IpAddr;

use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use tollgate::Key;
use tollgate::request::{RequestHeaders, RequestView};

use crate::keys::{CustomKey, Identity, RouteName, Tier, peer_addr};

/// A request as the engine sees it; `exact` tells the body's exact length when its type can (only
/// asked on routes with body limits).
pub(crate) struct View<'a, F> {
    method: &'a Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    exact: F,
}

impl<'a, F: Fn() -> Option<u64>> View<'a, F> {
    #[inline(always)]
    pub(crate) fn of<B>(request: &'a Request<B>, exact: F) -> Self {
        View {
            method: request.method(),
            uri: request.uri(),
            version: request.version(),
            headers: request.headers(),
            extensions: request.extensions(),
            exact,
        }
    }

    #[inline(always)]
    pub(crate) fn of_parts(parts: &'a Parts, exact: F) -> Self {
        View {
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            headers: &parts.headers,
            extensions: &parts.extensions,
            exact,
        }
    }
}

impl<F: Fn() -> Option<u64>> RequestView for View<'_, F> {
    #[inline]
    fn method(&self) -> &str {
        self.method.as_str()
    }

    #[inline]
    fn path(&self) -> &str {
        self.uri.path()
    }

    #[inline]
    fn matched_route(&self) -> Option<&str> {
        self.extensions.get::<RouteName>().map(|r| &*r.0)
    }

    #[inline]
    fn peer_ip(&self) -> Option<IpAddr> {
        peer_addr(self.extensions).map(|peer| peer.ip())
    }

    #[inline]
    fn headers(&self) -> &(dyn RequestHeaders + Sync) {
        self.headers
    }

    #[inline]
    fn is_http1(&self) -> bool {
        matches!(self.version, Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11)
    }

    #[inline]
    fn exact_body_len(&self) -> Option<u64> {
        (self.exact)()
    }

    #[inline]
    fn identity(&self) -> Option<&str> {
        self.extensions.get::<Identity>().map(|i| &*i.0)
    }

    #[inline]
    fn tier(&self) -> Option<&str> {
        self.extensions.get::<Tier>().map(|t| &*t.0)
    }

    #[inline]
    fn custom_key(&self) -> Option<Key<'_>> {
        self.extensions.get::<CustomKey>().map(|k| k.0.as_key())
    }
}
