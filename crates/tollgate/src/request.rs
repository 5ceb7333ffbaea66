//! What an adapter tells the core about a request: its headers by name ([`RequestHeaders`]) and
//! the few facts the [engine](crate::engine) decides on ([`RequestView`]). Each adapter
//! implements them once over its framework's request type; nothing here names a framework.
//!
//! What the application knows of a request and the request itself does not say, it puts in the
//! request's extensions (typed values; every framework has them) as the types below, the same
//! on every adapter: [`Identity`], [`Tier`], [`RouteName`], [`CustomKey`]. An adapter's view
//! reads them back for the engine.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;

use crate::client_ip::ClientIpResolver;
use crate::key::{Key, OwnedKey};
use crate::policy::{KeyFields, RequestKeys};

/// The authenticated identity of a request, inserted in its extensions by the application's auth
/// layer ([`KeyKind::Identity`](crate::KeyKind::Identity) counts by it; anonymous clients by IP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity(pub Arc<str>);

/// The client's tier (e.g. `free`, `pro`), inserted by the application: it chooses among a limit's
/// tier quotas ([`Limit::tier`](crate::Limit::tier)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tier(pub Arc<str>);

/// A route name the application reports, used instead of matching the request's path against the
/// engine's route patterns (see [`RequestView::matched_route`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteName(pub Arc<str>);

/// A key of the application's own, for limits keyed by [`KeyKind::Custom`](crate::KeyKind::Custom)
/// (e.g. set by an async middleware that looks the caller up).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CustomKey(pub OwnedKey);

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

    /// Whether the adapter counts a body of unknown length while it streams, charging each part
    /// as the application reads it through the plan's
    /// [`Admit::body_bytes`](crate::engine::Admit::body_bytes): the engine then neither refuses
    /// such a request 411 nor charges it the route's largest body up front. `false` unless the
    /// adapter says so.
    #[inline]
    fn counts_body(&self) -> bool {
        false
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
    /// What the checks of `fields` read of these keys, owned: for a check made after the
    /// request's view is gone (a body's bytes charged as it streams). Of the headers, only the
    /// values of `headers` are kept — the ones the limits are keyed by.
    pub(crate) fn to_owned_keys<'h>(
        self,
        fields: KeyFields,
        headers: impl IntoIterator<Item = &'h HeaderName>,
    ) -> OwnedRequestKeys {
        let mut kept = HeaderMap::new();
        if let Some(from) = self.headers.filter(|_| fields.headers) {
            for name in headers {
                from.each(name, &mut |value| {
                    // Every header type an adapter reads from holds valid header values.
                    if let Ok(value) = http::HeaderValue::from_bytes(value) {
                        kept.append(name.clone(), value);
                    }
                });
            }
        }
        let text = |on: bool, value: Option<&str>| value.filter(|_| on).map(Box::from);
        OwnedRequestKeys {
            ip: self.ip.filter(|_| fields.ip),
            identity: text(fields.identity, self.identity),
            route: text(fields.route, self.route),
            headers: kept,
            tier: text(fields.tier, self.tier),
            custom: self.custom.filter(|_| fields.custom).map(|k| k.to_owned_key()),
        }
    }

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

/// [`RequestKeys`] that own what they hold (see [`RequestKeys::to_owned_keys`]).
#[derive(Debug)]
pub(crate) struct OwnedRequestKeys {
    ip: Option<IpAddr>,
    identity: Option<Box<str>>,
    route: Option<Box<str>>,
    headers: HeaderMap,
    tier: Option<Box<str>>,
    custom: Option<OwnedKey>,
}

impl OwnedRequestKeys {
    /// The keys, borrowed.
    pub(crate) fn as_keys(&self) -> RequestKeys<'_> {
        RequestKeys {
            ip: self.ip,
            identity: self.identity.as_deref(),
            route: self.route.as_deref(),
            headers: Some(&self.headers),
            tier: self.tier.as_deref(),
            custom: self.custom.as_ref().map(OwnedKey::as_key),
        }
    }
}

/// Where a framework on `http` 1.x keeps what [`HttpView`] cannot find by itself: the peer
/// address and the matched route, when the framework stores them in the request's extensions
/// under types of its own (axum's `ConnectInfo` and `MatchedPath`). Each is asked before the
/// defaults: a [`SocketAddr`](std::net::SocketAddr) in the extensions, and a [`RouteName`].
pub trait HttpExtensions {
    /// The peer's address, from a type of the framework's own.
    #[inline]
    fn peer(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
        let _ = extensions;
        None
    }

    /// The route pattern the framework's router matched.
    #[inline]
    fn matched_route(extensions: &http::Extensions) -> Option<&str> {
        let _ = extensions;
        None
    }
}

/// No framework types: the peer is a [`SocketAddr`](std::net::SocketAddr) in the extensions (put
/// there by the server's accept loop), the route a [`RouteName`].
impl HttpExtensions for () {}

/// The engine's view of an `http` 1.x request or its parts — hyper, tower, axum, tonic, warp:
/// the adapters on `http` 1.x share it, naming only their framework's own extension types (`X`,
/// see [`HttpExtensions`]). Everything is read lazily, when a limit asks. `F` tells the body's
/// exact length where the body type can (asked only on routes with body limits).
///
/// ```
/// use std::net::SocketAddr;
/// use tollgate::request::{HttpView, RequestView};
///
/// let mut request = http::Request::post("/upload").header("content-length", "3").body(())?;
/// request.extensions_mut().insert("203.0.113.9:4000".parse::<SocketAddr>()?);
/// let view = HttpView::<_>::of(&request, || None);
/// assert_eq!((view.method(), view.path()), ("POST", "/upload"));
/// assert_eq!(view.peer_ip(), Some("203.0.113.9".parse()?));
/// assert!(view.is_http1());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HttpView<'a, F, X = ()> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    version: http::Version,
    headers: &'a HeaderMap,
    extensions: &'a http::Extensions,
    exact: F,
    counts_body: bool,
    framework: std::marker::PhantomData<fn() -> X>,
}

impl<F, X> fmt::Debug for HttpView<'_, F, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpView").field("method", self.method).field("uri", self.uri).finish_non_exhaustive()
    }
}

impl<'a, F: Fn() -> Option<u64>, X: HttpExtensions> HttpView<'a, F, X> {
    /// The view of `request`.
    #[inline(always)]
    pub fn of<B>(request: &'a http::Request<B>, exact: F) -> Self {
        HttpView {
            method: request.method(),
            uri: request.uri(),
            version: request.version(),
            headers: request.headers(),
            extensions: request.extensions(),
            exact,
            counts_body: false,
            framework: std::marker::PhantomData,
        }
    }

    /// The view of a request's parts (its body taken apart, e.g. to be checked across awaits).
    #[inline(always)]
    pub fn of_parts(parts: &'a http::request::Parts, exact: F) -> Self {
        HttpView {
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            headers: &parts.headers,
            extensions: &parts.extensions,
            exact,
            counts_body: false,
            framework: std::marker::PhantomData,
        }
    }

    /// Tells the engine that the adapter counts the body while it streams
    /// ([`RequestView::counts_body`]): it does so for every request it gets this view of.
    #[inline(always)]
    #[must_use]
    pub fn counting_body(mut self) -> Self {
        self.counts_body = true;
        self
    }
}

impl<F: Fn() -> Option<u64>, X: HttpExtensions> RequestView for HttpView<'_, F, X> {
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
        X::matched_route(self.extensions).or_else(|| self.extensions.get::<RouteName>().map(|r| &*r.0))
    }

    #[inline]
    fn peer_ip(&self) -> Option<IpAddr> {
        X::peer(self.extensions).or_else(|| self.extensions.get::<std::net::SocketAddr>().copied()).map(|p| p.ip())
    }

    #[inline]
    fn headers(&self) -> &(dyn RequestHeaders + Sync) {
        self.headers
    }

    #[inline]
    fn is_http1(&self) -> bool {
        matches!(self.version, http::Version::HTTP_09 | http::Version::HTTP_10 | http::Version::HTTP_11)
    }

    #[inline]
    fn exact_body_len(&self) -> Option<u64> {
        (self.exact)()
    }

    #[inline]
    fn counts_body(&self) -> bool {
        self.counts_body
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
