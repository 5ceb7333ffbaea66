//! Rate limiting for [warp](https://docs.rs/warp) 0.4 applications, on the
//! [tollgate](https://docs.rs/tollgate) core: HTTP limits and WebSocket limits.
//!
//! ```no_run
//! use tollgate::{KeyKind, Limit, Policy};
//! use warp::Filter;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip())).build()?;
//! let routes = warp::path("hello").map(|| "hello");
//! let limited = tollgate_warp::RateLimit::new(policy).service(routes);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3030").await?;
//! tollgate_warp::serve(listener, limited).await?; // instead of warp::serve(routes)
//! # Ok(())
//! # }
//! ```
//!
//! [`RateLimit`] holds the limits — a [`Policy`](tollgate::Policy), per-route [`Limits`], or a
//! whole [TOML configuration](tollgate::config) ([`RateLimit::from_config`]), in memory or in
//! Redis (`tollgate-redis`) — and [`RateLimit::service`] puts them in front of the application's
//! filter. [`serve`] runs the result as `warp::serve` runs a filter (the same hyper server loop),
//! with the peer address in each request's extensions: in filters, read it with [`remote`]
//! instead of `warp::addr::remote()`.
//!
//! **Why a service and not a filter.** A warp filter sees neither the request body a later
//! filter reads nor the response body returned, and its refusals would be rejections, which need
//! a `recover` and let `or` try the next route. The limits need both bodies — a body counted
//! while it streams (413 past the route's largest body; a body of unknown length charged to the
//! body-bytes limit as it is read, 429 past it), an in-flight lease held until the response body
//! ends — and answer with the refusal itself. So the application's filter becomes
//! a service (`warp::service`) and [`RateLimitService`] wraps it: it builds the core's view of
//! the request, asks the [engine](tollgate::engine), and either answers the refusal (429, 413,
//! 503 with its headers and JSON body) or calls the filter with the request and finishes the
//! response (rate-limit headers, the lease in the body). Nothing to `recover`, no `or` branch
//! tried, no 500.
//!
//! - Keys: client IP (trusted-proxy aware, through the engine's resolver), header, route (the
//!   engine's patterns on the path, or a [`RouteName`]), global, and an [`Identity`], [`Tier`] or
//!   [`CustomKey`] found by [`RateLimit::identify`] / [`RateLimit::identify_async`] (see
//!   [`keys`]).
//! - WebSocket (feature `websocket`, on by default): the [`ws()`] filter in place of
//!   `warp::ws()`, giving a [`LimitedWs`] whose socket is a [`LimitedWebSocket`] (see
//!   [`websocket`]).

pub mod keys;
pub mod rate_limit;
mod serve;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use keys::{CustomKey, Identified, Identity, RouteName, Tier, remote};
pub use rate_limit::{RateLimit, RateLimitService, RequestBody, ResponseBody, ResponseFuture};
pub use serve::{ServeOptions, serve, serve_with_shutdown};
pub use tollgate::engine::{Limits, WebSocketLimits};
pub use tollgate::live::LiveEngine;
#[cfg(feature = "websocket")]
pub use websocket::{LimitedWebSocket, LimitedWs, UpgradeLease, ws};
