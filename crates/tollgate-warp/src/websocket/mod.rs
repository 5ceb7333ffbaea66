//! WebSocket limits: the upgrade guard's lease and the message-limiting socket.
//!
//! **Upgrade guard.** A route with [`WebSocketLimits`](tollgate::engine::WebSocketLimits) is
//! checked by the engine before any filter runs: the connection rate (the route's policy) and a
//! concurrency lease; over a per-client limit the upgrade gets 429 with rate-limit headers, and a
//! full global cap gets 503 — never a half-open socket. The lease waits in the request's
//! extensions as an [`UpgradeLease`]; the [`ws()`] filter hands it to the upgraded socket, so it
//! is released when the socket is dropped (after a close, when the client vanishes, or when the
//! handler panics), not at the `101`.
//!
//! **Message limits.** [`LimitedWebSocket`] wraps warp's [`WebSocket`] and
//! runs every incoming message through the core's [`MessageGate`]: allowed messages come out
//! unchanged, refused ones are dropped and answered with a JSON error frame, delayed, or end the
//! connection with a close frame (1009 over the largest message, also when the socket itself
//! refused it as too large; 1008 for a ping flood; 4429 over a rate with the close action; 1013
//! when the per-key table is full). The application's loop stays the same.
//!
//! ```
//! use futures_util::{SinkExt, StreamExt};
//! use warp::Filter;
//!
//! let echo = warp::path("ws").and(tollgate_warp::ws()).map(|ws: tollgate_warp::LimitedWs| {
//!     ws.on_upgrade(|mut socket| async move {
//!         while let Some(Ok(message)) = socket.next().await {
//!             if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! });
//! # let _ = echo;
//! ```

mod stream;

pub use stream::{LimitedWebSocket, WarpMessages};
pub use tollgate::websocket::UpgradeLease;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tollgate::HeaderOptions;
use tollgate::engine::Refusal;
use tollgate::websocket::MessageGate;
use warp::Filter;
use warp::Reply;
use warp::ws::{WebSocket, Ws};

/// warp's `ws()` for a route with WebSocket limits: extracts a [`LimitedWs`], whose
/// [`on_upgrade`](LimitedWs::on_upgrade) hands the handler a [`LimitedWebSocket`] holding the
/// connection's lease. Rejects as `warp::ws()` does when the request is not an upgrade.
///
/// Unlike `warp::ws()`, it may run in several `or` branches of one request
/// (`ws().and(path("chat")).or(ws().and(path("news")))`): a branch a later filter rejects leaves
/// both the lease and the connection's upgrade to the branch that upgrades.
pub fn ws() -> impl Filter<Extract = (LimitedWs,), Error = warp::Rejection> + Copy {
    warp::ws().and(warp::ext::optional::<UpgradeLease>()).and(warp::ext::optional::<Handshake>()).map(LimitedWs::new)
}

/// An upgrade request the limits admitted: warp's [`Ws`] with the connection's lease and message
/// gate. With a largest message size, the socket's own message and frame caps are set to it, so
/// it never buffers a larger message; one is answered with close 1009.
pub struct LimitedWs {
    // `Some` until `on_upgrade`; given back to the request's `Handshake` when dropped before.
    ws: Option<Ws>,
    // The lease stays in its shared slot until `on_upgrade`: a filter evaluated in an `or` branch
    // that a later filter rejects drops its `LimitedWs`, and the branch that upgrades must still
    // find the lease to count its socket.
    granted: Option<(UpgradeLease, MessageGate)>,
    handshake: Option<Handshake>,
}

impl fmt::Debug for LimitedWs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedWs").field("granted", &self.granted).finish_non_exhaustive()
    }
}

impl LimitedWs {
    fn new(ws: Ws, lease: Option<UpgradeLease>, handshake: Option<Handshake>) -> Self {
        // warp's `ws()` takes hyper's upgrade out of the request: after an earlier branch's, the
        // `Ws` it makes has none (its `101` would come with no socket), so that branch's is used.
        let mut ws = handshake.as_ref().and_then(Handshake::take).unwrap_or(ws);
        let Some(slot) = lease else { return Self { ws: Some(ws), granted: None, handshake } };
        let gate = slot.gate();
        if let (Some(max), Some(frame)) = (gate.limits().max_message_size, gate.limits().frame_cap()) {
            ws = ws.max_message_size(max).max_frame_size(frame);
        }
        Self { ws: Some(ws), granted: Some((slot, gate)), handshake }
    }

    /// Finishes the upgrade and runs `callback` with the limited socket, which takes the
    /// connection's lease here (before the `101`, so the service does not release it as
    /// untaken). Answers the core's 500 (`{"error":"websocket_limits_missing"}`, and logs why)
    /// when the route has no WebSocket limits — the service is missing or the route is not
    /// configured — or when the lease was already taken (by another upgrade of the same
    /// request): never an uncounted socket.
    pub fn on_upgrade<F, Fut>(mut self, callback: F) -> warp::reply::Response
    where
        F: FnOnce(LimitedWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some((slot, gate)) = self.granted.take() else {
            tracing::error!("tollgate_warp::ws() used on a route without WebSocket limits");
            return limits_missing();
        };
        let Some(lease) = slot.take() else {
            tracing::error!("the WebSocket connection lease was already taken: one upgrade per request");
            return limits_missing();
        };
        // Always there: only this method takes it, and it consumes `self`.
        let Some(ws) = self.ws.take() else { return limits_missing() };
        ws.on_upgrade(move |socket: WebSocket| {
            callback(LimitedWebSocket::with_gate(socket, gate).with_lease(Some(lease)))
        })
        .into_response()
    }

    /// Changes warp's upgrade settings (e.g. `max_write_buffer_size`).
    #[must_use]
    pub fn map_ws(mut self, f: impl FnOnce(Ws) -> Ws) -> Self {
        self.ws = self.ws.take().map(f);
        self
    }
}

impl Drop for LimitedWs {
    fn drop(&mut self) {
        if let (Some(ws), Some(handshake)) = (self.ws.take(), &self.handshake) {
            handshake.give_back(ws);
        }
    }
}

/// A request's WebSocket handshake (warp's [`Ws`], with hyper's upgrade) between the `or`
/// branches that evaluate [`ws()`]: one whose `LimitedWs` is dropped without upgrading leaves it
/// here for the next. The service puts one in each upgrade request it gives an [`UpgradeLease`].
#[derive(Clone, Default)]
pub(crate) struct Handshake(Arc<Mutex<Option<Ws>>>);

impl Handshake {
    fn take(&self) -> Option<Ws> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn give_back(&self, ws: Ws) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(ws);
    }
}

/// The core's 500 for an upgrade without a lease to count it, in the default body style (the
/// filter has no engine at hand, so no configured style).
fn limits_missing() -> warp::reply::Response {
    let refusal = Refusal::websocket_limits_missing(&HeaderOptions::default());
    let mut response = http::Response::new(Bytes::new());
    *response.body_mut() = refusal.render_into(response.headers_mut());
    *response.status_mut() = refusal.status();
    response.into_response()
}
