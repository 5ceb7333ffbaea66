//! What a request is counted by: the [`RequestKeys`] the core's policies read, taken from an
//! [`http::Request`].
//!
//! - **Client IP**: the peer address — axum's `ConnectInfo<SocketAddr>` (feature `axum`), or a
//!   [`SocketAddr`] an outer layer put in the request extensions — resolved through trusted
//!   proxies by a [`ClientIpResolver`] (forwarding headers from an untrusted peer are ignored).
//! - **Identity**: an [`Identity`] an authentication layer put in the extensions (the core counts
//!   anonymous clients by IP instead).
//! - **Tier**: a [`Tier`] in the extensions, choosing among a limit's tier quotas.
//! - **Route**: axum's `MatchedPath` (feature `axum`) or a [`RouteName`] in the extensions.
//! - **Custom**: a [`CustomKey`] in the extensions, e.g. set by an async `axum::middleware::from_fn`
//!   that looks the caller up.
//! - **Headers**: the request's headers, for limits keyed by a header.

use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use http::{Extensions, HeaderMap, Request};
use tollgate::{ClientIpResolver, RequestKeys};

use crate::view::{matched_route, peer_addr};

pub use tollgate::request::{CustomKey, Identity, RouteName, Tier};

/// Takes the keys of a request: the client address through trusted proxies, and the identity,
/// tier, route and custom key found in its extensions.
#[derive(Clone, Debug, Default)]
pub struct KeyExtractor {
    pub(crate) resolver: ClientIpResolver,
}

impl KeyExtractor {
    /// Trusts no proxy: the client address is the peer address.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves the client address with `resolver` (trusted proxies, headers read).
    #[must_use]
    pub fn client_ip_resolver(mut self, resolver: ClientIpResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The resolver.
    pub fn resolver(&self) -> &ClientIpResolver {
        &self.resolver
    }

    /// The peer's socket address: axum's `ConnectInfo<SocketAddr>` (feature `axum`), else a
    /// `SocketAddr` in the extensions.
    pub fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
        peer_addr(request.extensions())
    }

    /// The client's address, through trusted proxies.
    pub fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        self.client_ip_of(request.extensions(), request.headers())
    }

    fn client_ip_of(&self, ext: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer_addr(ext)?;
        Some(self.resolver.resolve(peer.ip(), headers))
    }

    /// Everything the core's policies may count by (the route: axum's `MatchedPath` or a
    /// [`RouteName`]).
    pub fn keys<'a, B>(&self, request: &'a Request<B>) -> RequestKeys<'a> {
        self.keys_of(request.extensions(), request.headers())
    }

    /// [`KeyExtractor::keys`] from a request's parts.
    pub fn keys_of_parts<'a>(&self, parts: &'a Parts) -> RequestKeys<'a> {
        self.keys_of(&parts.extensions, &parts.headers)
    }

    fn keys_of<'a>(&self, ext: &'a Extensions, headers: &'a HeaderMap) -> RequestKeys<'a> {
        RequestKeys {
            ip: self.client_ip_of(ext, headers),
            identity: ext.get::<Identity>().map(|i| &*i.0),
            route: matched_route(ext),
            headers: Some(headers),
            tier: ext.get::<Tier>().map(|t| &*t.0),
            custom: ext.get::<CustomKey>().map(|k| k.0.as_key()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_extensions_and_trusted_proxy() {
        let resolver = ClientIpResolver::new().trust("127.0.0.0/8".parse().unwrap());
        let extractor = KeyExtractor::new().client_ip_resolver(resolver);
        let mut req = Request::builder().header("x-forwarded-for", "203.0.113.5").body(()).unwrap();
        req.extensions_mut().insert("127.0.0.1:9".parse::<SocketAddr>().unwrap());
        req.extensions_mut().insert(Identity("alice".into()));
        req.extensions_mut().insert(RouteName("/api".into()));
        let keys = extractor.keys(&req);
        assert_eq!(keys.ip, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(keys.identity, Some("alice"));
        assert_eq!(keys.route, Some("/api"));
        assert_eq!(KeyExtractor::new().keys(&req).ip, Some("127.0.0.1".parse().unwrap()));
        let bare = Request::new(());
        assert_eq!(KeyExtractor::new().keys(&bare).ip, None);
    }
}
