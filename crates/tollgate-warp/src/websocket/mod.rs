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

pub use stream::LimitedWebSocket;
pub use tollgate::websocket::UpgradeLease;

use std::fmt;
use std::future::Future;

use tollgate::ConnectionLease;
use tollgate::websocket::MessageGate;
use warp::Filter;
use warp::Reply;
use warp::ws::{WebSocket, Ws};

/// The largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// warp's `ws()` for a route with WebSocket limits: extracts a [`LimitedWs`], whose
/// [`on_upgrade`](LimitedWs::on_upgrade) hands the handler a [`LimitedWebSocket`] holding the
/// connection's lease. Rejects as `warp::ws()` does when the request is not an upgrade.
pub fn ws() -> impl Filter<Extract = (LimitedWs,), Error = warp::Rejection> + Copy {
    warp::ws().and(warp::ext::optional::<UpgradeLease>()).map(LimitedWs::new)
}

/// An upgrade request the limits admitted: warp's [`Ws`] with the connection's lease and message
/// gate. With a largest message size, the socket's own message and frame caps are set to it, so
/// it never buffers a larger message; one is answered with close 1009.
pub struct LimitedWs {
    ws: Ws,
    granted: Option<(Option<ConnectionLease>, MessageGate)>,
}

impl fmt::Debug for LimitedWs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedWs").field("granted", &self.granted).finish_non_exhaustive()
    }
}

impl LimitedWs {
    fn new(mut ws: Ws, lease: Option<UpgradeLease>) -> Self {
        let Some(slot) = lease else { return Self { ws, granted: None } };
        let gate = slot.gate();
        if let Some(max) = gate.limits().max_message_size {
            // Its frame cap applies to pings, pongs and closes too, which the protocol lets carry
            // 125 bytes whatever the limit.
            ws = ws.max_message_size(max).max_frame_size(max.max(MAX_CONTROL_PAYLOAD));
        }
        Self { ws, granted: Some((slot.take(), gate)) }
    }

    /// Finishes the upgrade and runs `callback` with the limited socket. Answers 500 (and logs
    /// why) when the route has no WebSocket limits: the service is missing or the route is not
    /// configured.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> warp::reply::Response
    where
        F: FnOnce(LimitedWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self { ws, granted } = self;
        let Some((lease, gate)) = granted else {
            tracing::error!("tollgate_warp::ws() used on a route without WebSocket limits");
            let body = r#"{"error":"websocket_limits_not_configured"}"#;
            let reply = warp::reply::with_header(body, http::header::CONTENT_TYPE, "application/json");
            return warp::reply::with_status(reply, http::StatusCode::INTERNAL_SERVER_ERROR).into_response();
        };
        ws.on_upgrade(move |socket: WebSocket| callback(LimitedWebSocket::with_gate(socket, gate).with_lease(lease)))
            .into_response()
    }

    /// Changes warp's upgrade settings (e.g. `max_write_buffer_size`).
    #[must_use]
    pub fn map_ws(mut self, f: impl FnOnce(Ws) -> Ws) -> Self {
        self.ws = f(self.ws);
        self
    }
}
