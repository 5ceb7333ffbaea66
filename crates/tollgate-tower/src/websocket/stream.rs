//! The message-limiting socket wrapper: the core's [`LimitedSocket`], reading messages through
//! [`WsMessage`].

use std::any::Any;

use tollgate::MonotonicClock;
use tollgate::websocket::{CloseFrame, LimitedSocket, MessageKind, SocketMessages};

use super::message::WsMessage;

/// A WebSocket whose incoming messages pass a [`MessageGate`](tollgate::websocket::MessageGate)
/// (see the [module docs](crate::websocket)): the core's [`LimitedSocket`] around any socket
/// whose messages are [`WsMessage`]s (axum's, tokio-tungstenite's). It is a `Stream` of the
/// messages let through and a `Sink` for the application's own messages, like the socket it
/// wraps; it holds the connection's concurrency lease until it is dropped. A refused message is
/// dropped and answered with a JSON error frame, held (the delay action), or answered with a
/// close frame after which the stream ends.
pub type LimitedWebSocket<W, M, C = MonotonicClock> = LimitedSocket<W, M, WsMessages, C>;

/// Reads and builds [`WsMessage`]s for the core's [`LimitedSocket`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WsMessages;

impl<M: WsMessage> SocketMessages<M> for WsMessages {
    #[inline]
    fn kind(message: &M) -> MessageKind {
        message.kind()
    }

    #[inline]
    fn len(message: &M) -> usize {
        message.payload_len()
    }

    #[inline]
    fn text(message: &M) -> Option<&str> {
        message.as_text()
    }

    fn text_message(text: String) -> M {
        M::text(text)
    }

    fn close_message(frame: &CloseFrame) -> M {
        M::close(frame)
    }

    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        M::too_large(error)
    }
}
