//! # tollgate-tower
//!
//! tollgate's rate limits as a tower middleware: HTTP requests, body sizes and bytes, in-flight
//! requests, WebSocket upgrades and WebSocket messages. Works with axum, hyper and tonic.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tollgate::{KeyKind, Limit, Policy};
//! use tollgate_tower::RateLimitLayer;
//!
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip())).build()?;
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(RateLimitLayer::new(policy));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! The client address comes from axum's `ConnectInfo` (serve with
//! `into_make_service_with_connect_info`) or a `SocketAddr` in the request extensions, through
//! trusted proxies ([`tollgate::ClientIpResolver`]); see [`keys`] for the other keys. The
//! middleware is in [`rate_limit`]; WebSocket upgrades and messages in [`websocket`].
//!
//! Features: `axum` (axum's `ConnectInfo`/`MatchedPath` keys, [`LimitedUpgrade`] and limits on
//! axum's `WebSocket`), `tungstenite` (limits on tokio-tungstenite's `WebSocketStream`).

pub mod config;
pub mod keys;
pub mod rate_limit;
pub mod websocket;

pub use keys::{CustomKey, Identity, KeyExtractor, RouteName, Tier};
pub use rate_limit::{Limits, RateLimit, RateLimitLayer, ResponseBody, ResponseFuture, WebSocketLimits};
#[cfg(feature = "axum")]
pub use websocket::LimitedUpgrade;
pub use websocket::{LimitedWebSocket, UpgradeLease, WsMessage};
