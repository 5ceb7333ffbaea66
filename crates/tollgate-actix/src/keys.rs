//! What a request is counted by, beyond what the request itself says: values the application puts
//! in the request extensions (`req.extensions_mut().insert(...)`) before the middleware runs —
//! from an authentication middleware wrapped outside the rate limit, or an async
//! `actix_web::middleware::from_fn` that looks the caller up (a "custom async key").
//!
//! - [`Identity`]: the authenticated identity ([`KeyKind::Identity`](tollgate::KeyKind); anonymous
//!   clients are counted by IP instead).
//! - [`Tier`]: the client's tier, choosing among a limit's tier quotas.
//! - [`CustomKey`]: a key of the application's own ([`KeyKind::Custom`](tollgate::KeyKind)).
//! - [`RouteName`]: a route name the application reports, used instead of matching the URI's path
//!   against the limits' route patterns.
//!
//! The client IP is the connection's peer address (`ServiceRequest::peer_addr`), resolved through
//! the trusted proxies of the engine's [`ClientIpResolver`](tollgate::ClientIpResolver): actix's
//! `realip_remote_addr` is not used, as it believes forwarding headers from anyone.

use std::sync::Arc;

use tollgate::OwnedKey;

/// The authenticated identity of a request, inserted by the application's auth middleware.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity(pub Arc<str>);

/// The client's tier (e.g. `free`, `pro`), inserted by the application.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tier(pub Arc<str>);

/// A route name for route-keyed limits and per-route tables, reported by the application; without
/// one the engine matches the URI's path against its own route patterns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteName(pub Arc<str>);

/// A key of the application's own, for limits keyed by [`tollgate::KeyKind::Custom`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CustomKey(pub OwnedKey);
