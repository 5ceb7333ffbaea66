//! # tollgate-tower
//!
//! tollgate's rate limits as a tower middleware: HTTP requests, body sizes and bytes, in-flight
//! requests, WebSocket upgrades and WebSocket messages. Works with axum, hyper and tonic.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tollgate::{KeyKind, Limit, Policy};
//! use tollgate_tower::RateLimitLayer;
//!
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip())).build()?;
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(RateLimitLayer::new(policy).axum_body());
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
//! **axum.** [`RateLimitLayer::axum_body`] keeps axum's `Body` as it is on routes without a body
//! or in-flight limit, so that axum does not box a body type of ours: two allocations fewer per
//! request. Without it the layer works the same, with any body type.
//!
//! **Plain hyper.** The inner service receives `Request<tollgate_tower::RequestBody<B>>` (the
//! body counted while it streams, see [`rate_limit`]); put the peer address in the extensions
//! before the layer, e.g. with
//! `ServiceBuilder::new().map_request(move |mut r: Request<_>| { r.extensions_mut().insert(peer); r })`
//! in the accept loop, then serve it with `hyper_util::service::TowerToHyperService`.
//!
//! **tonic.** `Server::builder().layer(RateLimitLayer::new(policy))` limits every call. gRPC
//! clients read `grpc-status`, not the HTTP status, so turn refusals into `RESOURCE_EXHAUSTED` with
//! [`RateLimitLayer::on_refusal`]: status 200, an empty body, `content-type: application/grpc`,
//! `grpc-status: 8` and a `grpc-message`; the rate-limit headers reach the client as metadata.
//! tonic does not put a `SocketAddr` in the extensions, so key gRPC limits by a metadata header
//! (`KeyKind::Header`) or insert the peer address with a layer of your own. Both are tested over
//! real sockets in `tests/hyper_tonic.rs`.
//!
//! **Live limits.** [`RateLimitLayer::with_engine`] takes a [`LiveEngine`] as well as an engine:
//! the limits can then be changed, or reloaded from the configuration file (with `SIGHUP` and on
//! change, tollgate's `reload` feature), while the server runs; each request is decided by the
//! engine current when it arrives (see `tollgate::live`).
//!
//! Features: `axum` (axum's `ConnectInfo`/`MatchedPath` keys, [`LimitedUpgrade`] and limits on
//! axum's `WebSocket`), `tungstenite` (limits on tokio-tungstenite's `WebSocketStream`),
//! `metrics` (the core's metrics, see `tollgate::observe`).

pub mod config;
pub mod keys;
pub mod rate_limit;
pub mod websocket;

mod view;

pub use keys::{CustomKey, Identity, KeyExtractor, RouteName, Tier};
#[cfg(feature = "axum")]
pub use rate_limit::AxumBody;
pub use rate_limit::{
    Bodies, BodyError, Limits, RateLimit, RateLimitLayer, RequestBodies, RequestBody, ResponseBodies, ResponseBody,
    ResponseFuture, WebSocketLimits, Wrapped,
};
pub use tollgate::live::LiveEngine;
#[cfg(feature = "axum")]
pub use websocket::LimitedUpgrade;
pub use websocket::{LimitedWebSocket, UpgradeLease, WsMessage};
