//! The message-limiting socket wrapper: the core's [`LimitedSocket`] reading warp's messages.

use std::any::Any;

use tollgate::MonotonicClock;
use tollgate::websocket::{CloseFrame, LimitedSocket, MessageKind, SocketMessages};
use warp::ws::{Message, WebSocket};

/// A WebSocket whose incoming messages pass a [`MessageGate`](tollgate::websocket::MessageGate)
/// (see the [module docs](crate::websocket)): the core's [`LimitedSocket`] around warp's
/// [`WebSocket`]. It is a `Stream` of the messages let through and a `Sink` for the
/// application's own messages, like warp's socket; it holds the connection's concurrency lease
/// until it is dropped. A refused message is dropped and answered with a JSON error frame, held
/// (the delay action), or answered with a close frame after which the stream ends.
pub type LimitedWebSocket<W = WebSocket, C = MonotonicClock> = LimitedSocket<W, Message, WarpMessages, C>;

/// Reads and builds warp's [`Message`]s for the core's [`LimitedSocket`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WarpMessages;

impl SocketMessages<Message> for WarpMessages {
    fn kind(message: &Message) -> MessageKind {
        if message.is_text() {
            MessageKind::Text
        } else if message.is_ping() {
            MessageKind::Ping
        } else if message.is_pong() {
            MessageKind::Pong
        } else if message.is_close() {
            MessageKind::Close
        } else {
            // Binary, or a raw frame (warp never yields one when reading).
            MessageKind::Binary
        }
    }

    fn len(message: &Message) -> usize {
        if message.is_close() {
            return message.close_frame().map_or(0, |(_, reason)| 2 + reason.len());
        }
        message.as_bytes().len()
    }

    fn text(message: &Message) -> Option<&str> {
        message.to_str().ok()
    }

    fn text_message(text: String) -> Message {
        Message::text(text)
    }

    fn close_message(frame: &CloseFrame) -> Message {
        Message::close_with(frame.code, frame.reason.clone())
    }

    /// tungstenite's "message too long" (warp wraps tungstenite's error in its own): the
    /// message's size and the socket's cap.
    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        use tungstenite::error::{CapacityError, Error as WsError};
        let error: &(dyn std::error::Error + 'static) = error.downcast_ref::<warp::Error>()?;
        std::iter::successors(Some(error), |&e| e.source()).find_map(|e| match e.downcast_ref::<WsError>() {
            Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => Some((*size, *max_size)),
            _ => None,
        })
    }
}
