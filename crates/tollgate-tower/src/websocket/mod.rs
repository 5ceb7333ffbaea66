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
pub use stream::LimitedWebSocket;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate::websocket::{MessageGate, MessageLimits};
use tollgate::{ConnectionLease, OwnedKey};

/// A WebSocket connection's concurrency lease, put in the upgrade request's extensions by the
/// middleware, with the route's message limits and the client's key (what the lease and the
/// per-key message limits count by). Take the lease and keep it as long as the socket (see
/// [`LimitedWebSocket::with_lease`]); if the handler never takes it, it is released when the
/// response is sent.
#[derive(Clone)]
pub struct UpgradeLease {
    slot: Arc<Mutex<Option<ConnectionLease>>>,
    messages: Arc<MessageLimits>,
    key: OwnedKey,
}

impl fmt::Debug for UpgradeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeLease").field("messages", &self.messages).field("key", &self.key).finish_non_exhaustive()
    }
}

impl UpgradeLease {
    pub(crate) fn new(lease: ConnectionLease, messages: Arc<MessageLimits>, key: OwnedKey) -> Self {
        Self { slot: Arc::new(Mutex::new(Some(lease))), messages, key }
    }

    /// The client's key: what the connection's lease and the per-key message limits count by.
    pub fn key(&self) -> &OwnedKey {
        &self.key
    }

    /// A message gate for the connection: the route's limits, its per-key limits counted under
    /// [`UpgradeLease::key`] (for [`LimitedWebSocket::with_gate`]).
    pub fn gate(&self) -> MessageGate {
        MessageGate::new(Arc::clone(&self.messages)).with_key(self.key.clone())
    }

    /// Takes the lease (once; later calls get `None`).
    pub fn take(&self) -> Option<ConnectionLease> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The route's message limits.
    pub fn message_limits(&self) -> &Arc<MessageLimits> {
        &self.messages
    }

    /// Releases the lease if no one took it; whether there was one.
    pub(crate) fn release_untaken(&self) -> bool {
        self.take().is_some()
    }
}
