//! The message-limiting socket wrapper.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tollgate::websocket::{CloseFrame, MessageGate, MessageKind, MessageLimits, Verdict};
use tollgate::{Clock, ConnectionLease, MonotonicClock};
use warp::ws::{Message, WebSocket};

pin_project! {
    /// A WebSocket whose incoming messages pass a [`MessageGate`] (see the
    /// [module docs](crate::websocket)). It is a `Stream` of the messages let through and a `Sink`
    /// for the application's own messages, like warp's [`WebSocket`]; it holds the connection's
    /// concurrency lease until it is dropped.
    ///
    /// A refused message is dropped and answered with a JSON error frame, held (the delay
    /// action), or answered with a close frame after which the stream ends.
    pub struct LimitedWebSocket<W = WebSocket, C: Clock = MonotonicClock> {
        #[pin]
        inner: W,
        gate: MessageGate<C>,
        outgoing: Option<Message>,
        flushing: bool,
        closing: bool,
        done: bool,
        delayed: Option<(Pin<Box<Sleep>>, Message)>,
        lease: Option<ConnectionLease>,
    }
}

impl<W, C: Clock> fmt::Debug for LimitedWebSocket<W, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedWebSocket")
            .field("gate", &self.gate)
            .field("closing", &self.closing)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<W> LimitedWebSocket<W> {
    /// Wraps `inner`, limiting its incoming messages by `limits`.
    pub fn new(inner: W, limits: Arc<MessageLimits>) -> Self {
        Self::with_gate(inner, MessageGate::new(limits))
    }
}

impl<W, C: Clock> LimitedWebSocket<W, C> {
    /// Wraps `inner` with a gate of your own (e.g. on a manual clock).
    pub fn with_gate(inner: W, gate: MessageGate<C>) -> Self {
        Self { inner, gate, outgoing: None, flushing: false, closing: false, done: false, delayed: None, lease: None }
    }

    /// Holds `lease` (a concurrency place) for as long as this socket lives.
    #[must_use]
    pub fn with_lease(mut self, lease: Option<ConnectionLease>) -> Self {
        self.lease = lease;
        self
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The wrapped socket, mutably (messages sent through it bypass nothing: only incoming
    /// messages are limited).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The wrapped socket and the lease.
    pub fn into_parts(self) -> (W, Option<ConnectionLease>) {
        (self.inner, self.lease)
    }
}

/// The core's neutral view of a warp message: its kind and payload length.
fn kind_and_len(message: &Message) -> (MessageKind, usize) {
    if message.is_text() {
        (MessageKind::Text, message.as_bytes().len())
    } else if message.is_binary() {
        (MessageKind::Binary, message.as_bytes().len())
    } else if message.is_ping() {
        (MessageKind::Ping, message.as_bytes().len())
    } else if message.is_pong() {
        (MessageKind::Pong, message.as_bytes().len())
    } else if message.is_close() {
        (MessageKind::Close, message.close_frame().map_or(0, |(_, reason)| 2 + reason.len()))
    } else {
        // A raw frame (warp never yields one when reading).
        (MessageKind::Binary, message.as_bytes().len())
    }
}

fn close_message(frame: &CloseFrame) -> Message {
    Message::close_with(frame.code, frame.reason.clone())
}

/// tungstenite's "message too long" (warp wraps tungstenite's error in its own): the message's
/// size and the socket's cap.
fn too_large(error: &warp::Error) -> Option<(usize, usize)> {
    use tungstenite::error::{CapacityError, Error as WsError};
    let error: &(dyn std::error::Error + 'static) = error;
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| match e.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => Some((*size, *max_size)),
        _ => None,
    })
}

impl<W, C> Stream for LimitedWebSocket<W, C>
where
    W: Stream<Item = Result<Message, warp::Error>> + Sink<Message, Error = warp::Error>,
    C: Clock,
{
    type Item = Result<Message, warp::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            // First deliver what the gate wants sent (an error or close frame).
            if this.outgoing.is_some() {
                if let Err(e) = ready!(this.inner.as_mut().poll_ready(cx)) {
                    *this.outgoing = None;
                    *this.done = *this.closing;
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some(message) = this.outgoing.take()
                    && let Err(e) = this.inner.as_mut().start_send(message)
                {
                    *this.done = *this.closing;
                    return Poll::Ready(Some(Err(e)));
                }
                *this.flushing = true;
            }
            if *this.flushing {
                let flushed = ready!(this.inner.as_mut().poll_flush(cx));
                *this.flushing = false;
                if *this.closing {
                    *this.done = true;
                }
                if let Err(e) = flushed {
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            }
            if let Some((sleep, _)) = this.delayed.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                if let Some((_, message)) = this.delayed.take() {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            let message = match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    // A message over the socket's own size cap never reaches the gate; it is
                    // answered with the gate's 1009 all the same, not cut off with a reset.
                    let Some((len, cap)) = too_large(&e) else { return Poll::Ready(Some(Err(e))) };
                    tracing::debug!(len, cap, "closing WebSocket over a message the socket refused as too large");
                    *this.outgoing = Some(close_message(&this.gate.too_large(len, cap)));
                    *this.closing = true;
                    continue;
                }
                None => return Poll::Ready(None),
            };
            let (kind, len) = kind_and_len(&message);
            match this.gate.check(kind, len, message.to_str().ok()) {
                Verdict::Allow => return Poll::Ready(Some(Ok(message))),
                Verdict::Delay(wait) => *this.delayed = Some((Box::pin(tokio::time::sleep(wait)), message)),
                Verdict::Drop(refusal) => {
                    tracing::debug!(limit = %refusal.limit, "WebSocket message dropped");
                    *this.outgoing = Some(Message::text(refusal.error_frame()));
                }
                Verdict::Close(frame) => {
                    tracing::debug!(code = frame.code, reason = %frame.reason, "closing WebSocket over a limit");
                    *this.outgoing = Some(close_message(&frame));
                    *this.closing = true;
                }
            }
        }
    }
}

impl<W, C> Sink<Message> for LimitedWebSocket<W, C>
where
    W: Sink<Message>,
    C: Clock,
{
    type Error = W::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.project().inner.start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_close(cx)
    }
}
