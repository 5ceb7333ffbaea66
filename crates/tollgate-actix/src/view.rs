//! The core's view of an actix-web request: what the engine asks of a request, read from the
//! `ServiceRequest` and its extensions.

use std::cell::Ref;
use std::net::IpAddr;

use actix_web::HttpMessage;
use actix_web::dev::{Extensions, ServiceRequest};
use actix_web::http::header::HeaderMap;
use actix_web::http::{Method, Version};
use http::header::HeaderName;
use tollgate::Key;
use tollgate::request::{RequestHeaders, RequestView};

use crate::keys::{CustomKey, Identity, RouteName, Tier};

/// actix's header map (`http` 0.2 types) as the core reads headers. Looked up by a scan of the
/// names rather than by hashing: converting the core's `http` 1.x name into actix's would copy a
/// custom name into a new allocation on every lookup, and a request has a handful of headers.
pub(crate) struct Headers<'a>(pub(crate) &'a HeaderMap);

impl RequestHeaders for Headers<'_> {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str();
        self.0.iter().find(|(n, _)| n.as_str() == name).map(|(_, v)| v.as_bytes())
    }

    fn each(&self, name: &HeaderName, each: &mut dyn FnMut(&[u8])) {
        let name = name.as_str();
        // actix keeps a name's values together, in the order received.
        for (_, value) in self.0.iter().filter(|(n, _)| n.as_str() == name) {
            each(value.as_bytes());
        }
    }
}

/// What the view reads of the request extensions: borrowed for a check that runs at once, copied
/// out for one that awaits a store (an extensions borrow is a `RefCell` borrow, never held across
/// an `.await`).
pub(crate) trait ExtensionKeys {
    fn identity(&self) -> Option<&str>;
    fn tier(&self) -> Option<&str>;
    fn custom(&self) -> Option<Key<'_>>;
    fn route(&self) -> Option<&str>;
}

impl ExtensionKeys for Ref<'_, Extensions> {
    #[inline]
    fn identity(&self) -> Option<&str> {
        self.get::<Identity>().map(|i| &*i.0)
    }
    #[inline]
    fn tier(&self) -> Option<&str> {
        self.get::<Tier>().map(|t| &*t.0)
    }
    #[inline]
    fn custom(&self) -> Option<Key<'_>> {
        self.get::<CustomKey>().map(|k| k.0.as_key())
    }
    #[inline]
    fn route(&self) -> Option<&str> {
        self.get::<RouteName>().map(|r| &*r.0)
    }
}

/// The extension values copied out of the request, for a check that awaits.
#[derive(Default)]
pub(crate) struct CopiedKeys {
    identity: Option<Identity>,
    tier: Option<Tier>,
    custom: Option<CustomKey>,
    route: Option<RouteName>,
}

impl CopiedKeys {
    pub(crate) fn of(extensions: &Extensions) -> Self {
        CopiedKeys {
            identity: extensions.get::<Identity>().cloned(),
            tier: extensions.get::<Tier>().cloned(),
            custom: extensions.get::<CustomKey>().cloned(),
            route: extensions.get::<RouteName>().cloned(),
        }
    }
}

impl ExtensionKeys for CopiedKeys {
    fn identity(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| &*i.0)
    }
    fn tier(&self) -> Option<&str> {
        self.tier.as_ref().map(|t| &*t.0)
    }
    fn custom(&self) -> Option<Key<'_>> {
        self.custom.as_ref().map(|k| k.0.as_key())
    }
    fn route(&self) -> Option<&str> {
        self.route.as_ref().map(|r| &*r.0)
    }
}

/// A request as the engine sees it.
pub(crate) struct View<'a, X> {
    method: &'a Method,
    path: &'a str,
    version: Version,
    peer: Option<IpAddr>,
    headers: Headers<'a>,
    extensions: X,
}

impl<'a> View<'a, Ref<'a, Extensions>> {
    /// The view of `request` for a check that runs at once, borrowing its extensions: drop it
    /// before anything else touches them.
    #[inline(always)]
    pub(crate) fn borrowing(request: &'a ServiceRequest) -> Self {
        View::with(request, request.extensions())
    }
}

impl<'a, X: ExtensionKeys> View<'a, X> {
    #[inline(always)]
    pub(crate) fn with(request: &'a ServiceRequest, extensions: X) -> Self {
        View {
            method: request.method(),
            path: request.path(),
            version: request.version(),
            peer: request.peer_addr().map(|peer| peer.ip()),
            headers: Headers(request.headers()),
            extensions,
        }
    }
}

impl<X: ExtensionKeys> RequestView for View<'_, X> {
    #[inline]
    fn method(&self) -> &str {
        self.method.as_str()
    }

    #[inline]
    fn path(&self) -> &str {
        self.path
    }

    #[inline]
    fn matched_route(&self) -> Option<&str> {
        self.extensions.route()
    }

    #[inline]
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer
    }

    #[inline]
    fn headers(&self) -> &(dyn RequestHeaders + Sync) {
        &self.headers
    }

    #[inline]
    fn is_http1(&self) -> bool {
        matches!(self.version, Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11)
    }

    /// The middleware counts every payload while it streams: one of unknown length (a chunked
    /// upload, an HTTP/2 request without `Content-Length`) is charged what it turns out to be,
    /// never refused 411 nor charged the route's largest body.
    #[inline]
    fn counts_body(&self) -> bool {
        true
    }

    #[inline]
    fn identity(&self) -> Option<&str> {
        self.extensions.identity()
    }

    #[inline]
    fn tier(&self) -> Option<&str> {
        self.extensions.tier()
    }

    #[inline]
    fn custom_key(&self) -> Option<Key<'_>> {
        self.extensions.custom()
    }
}
