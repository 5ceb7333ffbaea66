//! The message-limiting socket wrapper every adapter on `Stream`/`Sink` sockets shares (feature
//! `socket`): the plumbing around [`MessageGate`], once.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{CloseFrame, MessageGate, MessageKind, MessageLimits, Verdict};
use crate::clock::{Clock, MonotonicClock};
use crate::concurrency::ConnectionLease;

/// What the socket wrapper needs of a framework's message type `M`: its neutral view for the
/// gate, and how to build the error and close frames. An adapter implements it on a type of its
/// own (the orphan rule then lets it name the framework's message type) and names that type in
/// [`LimitedSocket`]'s `K`.
pub trait SocketMessages<M> {
    /// The message's kind.
    fn kind(message: &M) -> MessageKind;
    /// Its payload length in bytes.
    fn len(message: &M) -> usize;
    /// Its text, for a text message (the classifier reads it).
    fn text(message: &M) -> Option<&str>;
    /// A text message carrying `text` (the JSON error frame).
    fn text_message(text: String) -> M;
    /// A close message with `frame`'s code and reason.
    fn close_message(frame: &CloseFrame) -> M;
    /// The size and the cap of an incoming message the socket itself refused as too large (its
    /// protocol layer's own cap), read from the error its stream returned, whatever its type;
    /// `None` for any other error. Such a message is answered with close 1009, as one over the
    /// gate's limit, instead of the error being passed on.
    fn too_large(error: &dyn Any) -> Option<(usize, usize)> {
        let _ = error;
        None
    }
}

pin_project! {
    /// A WebSocket whose incoming messages pass a [`MessageGate`]: a `Stream` of the messages let
    /// through and a `Sink` for the application's own messages, like the socket it wraps (any
    /// `Stream<Item = Result<M, E>> + Sink<M, Error = E>`); it holds the connection's concurrency
    /// lease until it is dropped. A refused message is dropped and answered with the JSON error
    /// frame, held (the delay action), or answered with a close frame after which the stream
    /// ends. `K` reads and builds the framework's messages ([`SocketMessages`]).
    pub struct LimitedSocket<W, M, K, C: Clock = MonotonicClock> {
        #[pin]
        inner: W,
        gate: MessageGate<C>,
        outgoing: Option<M>,
        flushing: bool,
        closing: bool,
        done: bool,
        delayed: Option<(Pin<Box<Sleep>>, M)>,
        lease: Option<ConnectionLease>,
        messages: PhantomData<fn() -> K>,
    }
}

impl<W, M, K, C: Clock> fmt::Debug for LimitedSocket<W, M, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedWebSocket")
            .field("gate", &self.gate)
            .field("closing", &self.closing)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<W, M, K> LimitedSocket<W, M, K> {
    /// Wraps `inner`, limiting its incoming messages by `limits`.
    pub fn new(inner: W, limits: Arc<MessageLimits>) -> Self {
        Self::with_gate(inner, MessageGate::new(limits))
    }
}

impl<W, M, K, C: Clock> LimitedSocket<W, M, K, C> {
    /// Wraps `inner` with a gate of your own (e.g. on a manual clock, or counting per key).
    pub fn with_gate(inner: W, gate: MessageGate<C>) -> Self {
        Self {
            inner,
            gate,
            outgoing: None,
            flushing: false,
            closing: false,
            done: false,
            delayed: None,
            lease: None,
            messages: PhantomData,
        }
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

impl<W, M, E, K, C> Stream for LimitedSocket<W, M, K, C>
where
    W: Stream<Item = Result<M, E>> + Sink<M, Error = E>,
    K: SocketMessages<M>,
    E: 'static,
    C: Clock,
{
    type Item = Result<M, E>;

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
                    let Some((len, cap)) = K::too_large(&e) else { return Poll::Ready(Some(Err(e))) };
                    tracing::debug!(len, cap, "closing WebSocket over a message the socket refused as too large");
                    *this.outgoing = Some(K::close_message(&this.gate.too_large(len, cap)));
                    *this.closing = true;
                    continue;
                }
                None => return Poll::Ready(None),
            };
            match this.gate.check(K::kind(&message), K::len(&message), K::text(&message)) {
                Verdict::Allow => return Poll::Ready(Some(Ok(message))),
                Verdict::Delay(wait) => *this.delayed = Some((Box::pin(tokio::time::sleep(wait)), message)),
                Verdict::Drop(refusal) => {
                    tracing::debug!(limit = %refusal.limit, "WebSocket message dropped");
                    *this.outgoing = Some(K::text_message(refusal.error_frame()));
                }
                Verdict::Close(frame) => {
                    tracing::debug!(code = frame.code, reason = %frame.reason, "closing WebSocket over a limit");
                    *this.outgoing = Some(K::close_message(&frame));
                    *this.closing = true;
                }
            }
        }
    }
}

impl<W, M, K, C> Sink<M> for LimitedSocket<W, M, K, C>
where
    W: Sink<M>,
    C: Clock,
{
    type Error = W::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: M) -> Result<(), Self::Error> {
        self.project().inner.start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.project().inner.poll_close(cx)
    }
}
