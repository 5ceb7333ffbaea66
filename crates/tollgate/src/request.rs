//! What an adapter tells the core about a request: its headers by name ([`RequestHeaders`]) and
//! the few facts the [engine](crate::engine) decides on ([`RequestView`]). Each adapter
//! implements them once over its framework's request type; nothing here names a framework.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderName;

use crate::client_ip::ClientIpResolver;
use crate::key::Key;
use crate::policy::{KeyFields, RequestKeys};

/// A request's headers, looked up by name: what trusted-proxy resolution and header keys read.
/// Implemented for `http` 1.x's [`HeaderMap`]; an adapter on another header type implements it
/// over that type, so that no header is copied.
///
/// ```
/// use tollgate::request::RequestHeaders;
///
/// let mut headers = http::HeaderMap::new();
/// headers.append("x-forwarded-for", "203.0.113.7".parse()?);
/// headers.append("x-forwarded-for", "10.0.0.1".parse()?);
/// let name = http::HeaderName::from_static("x-forwarded-for");
/// assert_eq!(headers.first(&name), Some(&b"203.0.113.7"[..]));
/// let mut all = Vec::new();
/// headers.each(&name, &mut |value| all.push(value.to_vec()));
/// assert_eq!(all, [b"203.0.113.7".to_vec(), b"10.0.0.1".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait RequestHeaders {
    /// The first value of the header `name`, as bytes.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;

    /// Calls `each` with every value of the header `name`, in the order received.
    fn each(&self, name: &HeaderName, each: &mut dyn FnMut(&[u8]));
}

impl RequestHeaders for HeaderMap {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(http::HeaderValue::as_bytes)
    }

    fn each(&self, name: &HeaderName, each: &mut dyn FnMut(&[u8])) {
        for value in self.get_all(name) {
            each(value.as_bytes());
        }
    }
}

impl fmt::Debug for dyn RequestHeaders + Sync + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestHeaders")
    }
}

/// One HTTP request as the [engine](crate::engine) sees it: an adapter implements this over its
/// framework's request (cheaply: each method is asked only when a limit needs it).
///
/// ```
/// use std::net::IpAddr;
/// use tollgate::request::{RequestHeaders, RequestView};
///
/// /// A request of a framework of our own.
/// struct Incoming { method: &'static str, path: String, peer: IpAddr, headers: http::HeaderMap }
///
/// impl RequestView for Incoming {
///     fn method(&self) -> &str { self.method }
///     fn path(&self) -> &str { &self.path }
///     fn peer_ip(&self) -> Option<IpAddr> { Some(self.peer) }
///     fn headers(&self) -> &(dyn RequestHeaders + Sync) { &self.headers }
///     fn is_http1(&self) -> bool { true }
/// }
/// ```
pub trait RequestView {
    /// The method, upper-case (`GET`).
    fn method(&self) -> &str;

    /// The URI's path, without its query.
    fn path(&self) -> &str;

    /// The route pattern the framework's router matched, when the adapter runs after routing and
    /// the framework says (axum's `MatchedPath`), or a route name the application set; the engine
    /// then uses it instead of matching [`RequestView::path`] against its own patterns.
    #[inline]
    fn matched_route(&self) -> Option<&str> {
        None
    }

    /// The peer's address (before trusted-proxy resolution); `None` when the framework does not
    /// know it.
    fn peer_ip(&self) -> Option<IpAddr>;

    /// The request's headers.
    fn headers(&self) -> &(dyn RequestHeaders + Sync);

    /// Whether the request came over HTTP/1.x (or 0.9): without `Content-Length` and
    /// `Transfer-Encoding` such a request has no body (RFC 9112 §6.3), where an HTTP/2 or HTTP/3
    /// request may still have one.
    fn is_http1(&self) -> bool;

    /// The body's exact length when the body itself can tell (its size hint), for a request
    /// without `Content-Length`.
    #[inline]
    fn exact_body_len(&self) -> Option<u64> {
        None
    }

    /// The authenticated identity an auth layer attached to the request.
    #[inline]
    fn identity(&self) -> Option<&str> {
        None
    }

    /// The client's tier (e.g. `free`, `pro`) the application attached.
    #[inline]
    fn tier(&self) -> Option<&str> {
        None
    }

    /// A key of the application's own ([`KeyKind::Custom`](crate::KeyKind::Custom)).
    #[inline]
    fn custom_key(&self) -> Option<Key<'_>> {
        None
    }
}

impl<'a> RequestKeys<'a> {
    /// The keys of `request` that `fields` names, and nothing else (each is a lookup the adapter
    /// need not pay for when no limit reads it): the client address through `resolver`'s trusted
    /// proxies, and the identity, tier, custom key and headers the view gives. `route` finds the
    /// request's route ([`Engine::route_of`](crate::engine::Engine::route_of)).
    #[inline(always)]
    pub fn from_view<R: RequestView + ?Sized>(
        resolver: &ClientIpResolver,
        request: &'a R,
        fields: KeyFields,
        route: impl FnOnce() -> Option<&'a str>,
    ) -> Self {
        let headers = request.headers();
        RequestKeys {
            ip: if fields.ip { request.peer_ip().map(|peer| resolver.resolve(peer, headers)) } else { None },
            identity: if fields.identity { request.identity() } else { None },
            route: if fields.route { route() } else { None },
            headers: Some(headers),
            tier: if fields.tier { request.tier() } else { None },
            custom: if fields.custom { request.custom_key() } else { None },
        }
    }
}
