//! axum's upgrade extractor with the lease and message limits.

use std::fmt;
use std::future::Future;

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use tollgate::ConnectionLease;
use tollgate::websocket::MessageGate;

use super::{LimitedWebSocket, UpgradeLease};

/// axum's `WebSocketUpgrade` for a route with [`WebSocketLimits`](crate::WebSocketLimits): the
/// socket handed to [`LimitedUpgrade::on_upgrade`] limits its messages (per connection, and per
/// key across the client's connections) and holds the connection's lease until it is dropped.
/// With a largest message size, the socket's own message and frame caps are set to it, so it
/// never buffers a larger message; one is answered with close 1009 from its header.
///
/// Rejected with 500 when the route has no WebSocket limits (the middleware is missing), and as
/// `WebSocketUpgrade` is when the request is not an upgrade.
pub struct LimitedUpgrade {
    upgrade: WebSocketUpgrade,
    lease: Option<ConnectionLease>,
    gate: MessageGate,
}

impl fmt::Debug for LimitedUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedUpgrade").field("lease", &self.lease).field("gate", &self.gate).finish()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LimitedUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(slot) = parts.extensions.get::<UpgradeLease>().cloned() else {
            tracing::error!("LimitedUpgrade used on a route without WebSocket limits");
            return Err(missing_limits());
        };
        let mut upgrade =
            WebSocketUpgrade::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let gate = slot.gate();
        if let (Some(max), Some(frame)) = (gate.limits().max_message_size, gate.limits().frame_cap()) {
            // The socket then never buffers more than the limit; a larger message is refused by
            // it and answered with close 1009 by the wrapper.
            upgrade = upgrade.max_message_size(max).max_frame_size(frame);
        }
        Ok(Self { upgrade, lease: slot.take(), gate })
    }
}

/// The core's 500 for an upgrade whose route has no WebSocket limits, in the default body style
/// (no layer, so no configured style, is at hand).
fn missing_limits() -> Response {
    let refusal = tollgate::engine::Refusal::websocket_limits_missing(&tollgate::HeaderOptions::default());
    let mut response = Response::new(axum::body::Body::empty());
    *response.body_mut() = axum::body::Body::from(refusal.render_into(response.headers_mut()));
    *response.status_mut() = refusal.status();
    response
}

impl LimitedUpgrade {
    /// Finishes the upgrade and runs `callback` with the limited socket.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(LimitedWebSocket<WebSocket, Message>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self { upgrade, lease, gate } = self;
        upgrade.on_upgrade(move |socket| callback(LimitedWebSocket::with_gate(socket, gate).with_lease(lease)))
    }

    /// The underlying upgrade, for its other settings.
    pub fn map_upgrade(mut self, f: impl FnOnce(WebSocketUpgrade) -> WebSocketUpgrade) -> Self {
        self.upgrade = f(self.upgrade);
        self
    }
}
