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

// The core's extension types, the same for every adapter: an auth layer shared by an axum and an
// actix-web service inserts the same values.
pub use tollgate::request::{CustomKey, Identity, RouteName, Tier};
