//! # tollgate-actix
//!
//! tollgate's rate limits as an actix-web middleware: HTTP requests, body sizes and bytes,
//! in-flight requests, WebSocket upgrades and (feature `ws`) actix-ws message limits.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use tollgate::{KeyKind, Limit, Policy};
//! use tollgate_actix::RateLimit;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "5/s burst 10".parse()?).key(KeyKind::ip())).build()?;
//! let limit = RateLimit::new(policy); // once, outside the factory: every worker shares it
//! HttpServer::new(move || App::new().wrap(limit.clone()).route("/", web::get().to(|| async { "hello" })))
//!     .bind("127.0.0.1:3000")?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The middleware ([`rate_limit`]) is built from the core's types — a [`Policy`](tollgate::Policy),
//! [`Limits`] per route, an [`Engine`](tollgate::engine::Engine), a TOML
//! [`Config`](tollgate::Config) ([`RateLimit::from_config`]), the in-memory store or
//! `tollgate_redis::RedisStore` ([`RateLimit::from_config_with`]) — and decides nothing itself:
//! the core's engine does, as for every adapter. Wrap the whole `App`, or a `web::scope` or
//! `web::resource` with its own limits.
//!
//! The client address is the connection's peer address, through the trusted proxies of a
//! [`ClientIpResolver`](tollgate::ClientIpResolver) ([`RateLimit::client_ip_resolver`]); see
//! [`keys`] for identity, tier, route and custom keys from the request extensions.
//!
//! Features: `ws` (message limits on actix-ws sessions: `ws::handle`, `ws::LimitedMessageStream`),
//! `metrics` (the core's metrics, see `tollgate::observe`).

pub mod error;
pub mod keys;
pub mod rate_limit;
#[cfg(feature = "ws")]
pub mod ws;

mod view;

pub use error::Error;
pub use keys::{CustomKey, Identity, RouteName, Tier};
pub use rate_limit::{
    LimitedResponse, Limits, RateLimit, RateLimitMiddleware, RefusalHook, ResponseBody, ResponseFuture, WebSocketLimits,
};
pub use tollgate::live::LiveEngine;
pub use tollgate::websocket::UpgradeLease;
