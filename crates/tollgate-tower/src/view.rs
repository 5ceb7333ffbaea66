//! The core's view of an [`http::Request`] ([`HttpView`]), with axum's own extension types.

use std::net::SocketAddr;

use http::Extensions;
use tollgate::request::{HttpExtensions, HttpView, RouteName};

/// A request as the engine sees it.
pub(crate) type View<'a, F> = HttpView<'a, F, Axum>;

/// axum's `ConnectInfo<SocketAddr>` and `MatchedPath` (feature `axum`), asked before the core's
/// defaults (a `SocketAddr` and a [`RouteName`] in the extensions).
pub(crate) struct Axum;

impl HttpExtensions for Axum {
    #[inline]
    fn peer(ext: &Extensions) -> Option<SocketAddr> {
        #[cfg(feature = "axum")]
        if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(info.0);
        }
        let _ = ext;
        None
    }

    #[inline]
    fn matched_route(ext: &Extensions) -> Option<&str> {
        #[cfg(feature = "axum")]
        if let Some(path) = ext.get::<axum::extract::MatchedPath>() {
            return Some(path.as_str());
        }
        let _ = ext;
        None
    }
}

/// The peer's socket address: axum's `ConnectInfo<SocketAddr>` (feature `axum`), else a
/// `SocketAddr` in the extensions.
#[inline]
pub(crate) fn peer_addr(ext: &Extensions) -> Option<SocketAddr> {
    Axum::peer(ext).or_else(|| ext.get::<SocketAddr>().copied())
}

/// The matched route: axum's `MatchedPath` (feature `axum`), else a [`RouteName`].
#[inline]
pub(crate) fn matched_route(ext: &Extensions) -> Option<&str> {
    Axum::matched_route(ext).or_else(|| ext.get::<RouteName>().map(|r| &*r.0))
}
