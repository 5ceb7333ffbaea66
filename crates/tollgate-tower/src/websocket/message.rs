//! What the wrapper needs to know of a framework's message type.

use std::any::Any;

use tollgate::websocket::{CloseFrame, MessageKind};

/// A WebSocket message type the [`LimitedWebSocket`](super::LimitedWebSocket) can inspect and
/// build: implemented for axum's and tokio-tungstenite's `Message`.
pub trait WsMessage: Sized {
    /// Its kind.
    fn kind(&self) -> MessageKind;
    /// Its payload length in bytes.
    fn payload_len(&self) -> usize;
    /// Its text, for a text message.
    fn as_text(&self) -> Option<&str>;
    /// A text message (the error frame).
    fn text(text: String) -> Self;
    /// A close frame.
    fn close(frame: &CloseFrame) -> Self;
    /// The size and the cap of an incoming message that the socket itself refused as too large
    /// (its protocol layer's own size cap), read from the error its stream returned (whatever
    /// its type); `None` for any other error. The wrapper answers such a message with close 1009,
    /// as it does one over the gate's limit, instead of passing the error on.
    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        let _ = error;
        None
    }
}

/// tungstenite's "message too long", found in `error` or its sources (axum wraps tungstenite's
/// error in its own).
#[cfg(any(feature = "axum", feature = "tungstenite"))]
fn tungstenite_too_large(error: &(dyn std::error::Error + 'static)) -> Option<(usize, usize)> {
    use tungstenite::error::{CapacityError, Error as WsError};
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| match e.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => Some((*size, *max_size)),
        _ => None,
    })
}

#[cfg(feature = "axum")]
impl WsMessage for axum::extract::ws::Message {
    fn kind(&self) -> MessageKind {
        use axum::extract::ws::Message;
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
            Message::Ping(_) => MessageKind::Ping,
            Message::Pong(_) => MessageKind::Pong,
            Message::Close(_) => MessageKind::Close,
        }
    }

    fn payload_len(&self) -> usize {
        use axum::extract::ws::Message;
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(c) => c.as_ref().map_or(0, |c| 2 + c.reason.len()),
        }
    }

    fn as_text(&self) -> Option<&str> {
        match self {
            axum::extract::ws::Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    fn text(text: String) -> Self {
        axum::extract::ws::Message::Text(text.into())
    }

    fn close(frame: &CloseFrame) -> Self {
        axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
            code: frame.code,
            reason: frame.reason.clone().into(),
        }))
    }

    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        tungstenite_too_large(error.downcast_ref::<axum::Error>()?)
    }
}

#[cfg(feature = "tungstenite")]
impl WsMessage for tokio_tungstenite::tungstenite::Message {
    fn kind(&self) -> MessageKind {
        use tokio_tungstenite::tungstenite::Message;
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) | Message::Frame(_) => MessageKind::Binary,
            Message::Ping(_) => MessageKind::Ping,
            Message::Pong(_) => MessageKind::Pong,
            Message::Close(_) => MessageKind::Close,
        }
    }

    fn payload_len(&self) -> usize {
        self.len()
    }

    fn as_text(&self) -> Option<&str> {
        match self {
            tokio_tungstenite::tungstenite::Message::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    fn text(text: String) -> Self {
        tokio_tungstenite::tungstenite::Message::Text(text.into())
    }

    fn close(frame: &CloseFrame) -> Self {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame as TCloseFrame, frame::coding::CloseCode};
        tokio_tungstenite::tungstenite::Message::Close(Some(TCloseFrame {
            code: CloseCode::from(frame.code),
            reason: frame.reason.clone().into(),
        }))
    }

    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        tungstenite_too_large(error.downcast_ref::<tokio_tungstenite::tungstenite::Error>()?)
    }
}
