//! WebSocket limits: the upgrade guard's lease and the message-limiting socket wrapper.
//!
//! **Upgrade guard.** A route with [`WebSocketLimits`](crate::WebSocketLimits) checks the
//! connection rate (the route's policy) and takes a concurrency lease before the handler runs;
//! over a per-client limit the upgrade gets 429 with rate-limit headers, and a full global cap
//! gets 503 — never a half-open socket. The lease is put in the request's extensions as an
//! [`UpgradeLease`]; the handler moves it into the upgraded socket (axum's [`LimitedUpgrade`]
//! does this for you), so it is released when the socket is dropped: after a close, when the
//! client vanishes, or when the handler panics — not at the `101`. The lease is counted by the
//! route's key ([`WebSocketLimits::key`](crate::WebSocketLimits::key), from configuration the
//! `[[websocket]]` entry's `key`), in this process or — with a
//! [shared](tollgate::ConcurrencyLimiter::shared) limiter, e.g.
//! [`RateLimitLayer::from_config_with_leases`](crate::RateLimitLayer::from_config_with_leases) —
//! across every instance using one lease store.
//!
//! **Message limits.** [`LimitedWebSocket`] wraps any socket that is a
//! `Stream<Item = Result<M, E>> + Sink<M, Error = E>` (`E: 'static`) — axum's `WebSocket` (feature `axum`),
//! tokio-tungstenite's `WebSocketStream` (feature `tungstenite`) — and runs every incoming
//! message through a [`tollgate::websocket::MessageGate`]: allowed messages come out unchanged,
//! refused ones are dropped and answered with a JSON error frame, delayed, or end the connection
//! with a close frame (1009, 1008, 4429). The application's loop stays the same. Per-key limits
//! ([`MessageLimits::per_key_messages`](tollgate::websocket::MessageLimits::per_key_messages),
//! ...) are shared by all the connections of one client: [`LimitedUpgrade`] (or
//! [`UpgradeLease::gate`]) counts the socket under the key its upgrade was counted by.

#[cfg(feature = "axum")]
mod axum;
mod message;
mod stream;

#[cfg(feature = "axum")]
pub use self::axum::LimitedUpgrade;
pub use message::WsMessage;
pub use stream::{LimitedWebSocket, WsMessages};

pub use tollgate::websocket::UpgradeLease;
