//! WebSocket message limits for [actix-ws](actix_ws) sessions (feature `ws`).
//!
//! **Upgrade guard.** A route with [`WebSocketLimits`](crate::WebSocketLimits) has its upgrade
//! checked by the [`RateLimit`](crate::RateLimit) middleware before the handler runs: the
//! connection rate (the route's policy) and the concurrent connections (per key and globally).
//! Over a per-client limit the upgrade gets 429 with rate-limit headers, a full global cap 503 —
//! never a half-open socket. The connection's lease is put in the request extensions as an
//! [`UpgradeLease`]; [`handle`] takes it and moves it into the [`LimitedMessageStream`], so it
//! lives as long as the session's stream: it is released when the stream is dropped — after a
//! close, when the client vanishes (the stream ends and the handler's loop with it), or when the
//! handler's task panics — not at the `101`.
//!
//! **Message limits.** [`handle`] is `actix_ws::handle` with the incoming messages limited:
//! every message the client sends goes through the core's
//! [`MessageGate`] — messages and bytes per period, the largest
//! message, per-kind limits chosen by a classifier, per connection and per client across its
//! connections. Allowed messages come out of the stream unchanged; a refused one is dropped and
//! answered with a JSON error frame (`{"error":"rate_limited","limit":"messages","retry_after":3}`)
//! through the [`Session`], held (the delay action), or ends the session with a close frame:
//! `1009` for a message over the largest size, `1008` for a ping flood, `4429` over a rate with the
//! close action, `1013` when the server tracks as many clients as it may. Continuation frames are
//! put together into one `Text` or `Binary` message before the gate decides (so the classifier
//! sees the whole text), and a fragmented message whose frames add up past the largest size is
//! closed with `1009` as soon as they do, without buffering more. The application's loop stays
//! the same:
//!
//! ```no_run
//! use actix_web::{HttpRequest, HttpResponse, web};
//! use actix_ws::Message;
//!
//! async fn ws(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
//!     let (response, mut session, mut messages) = tollgate_actix::ws::handle(&req, body)?;
//!     actix_web::rt::spawn(async move {
//!         while let Some(Ok(message)) = messages.recv().await {
//!             let sent = match message {
//!                 Message::Text(text) => session.text(text).await,
//!                 Message::Binary(bytes) => session.binary(bytes).await,
//!                 Message::Ping(bytes) => session.pong(&bytes).await,
//!                 Message::Close(reason) => {
//!                     let _ = session.close(reason).await;
//!                     return;
//!                 }
//!                 _ => Ok(()),
//!             };
//!             if sent.is_err() {
//!                 return;
//!             }
//!         }
//!     });
//!     Ok(response)
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Item, Message, MessageStream, ProtocolError, Session};
use bytes::BytesMut;
use bytestring::ByteString;
use futures_util::Stream;
use futures_util::future::LocalBoxFuture;
use tokio::time::Sleep;
use tollgate::websocket::{CloseFrame, MessageGate, MessageKind, Verdict};
use tollgate::{Clock, ConnectionLease, MonotonicClock};

pub use tollgate::websocket::UpgradeLease;

use crate::error::Error;

/// The largest fragmented message put together when the route sets no largest message:
/// tungstenite's default `max_message_size`, 64 MiB, which warp and axum apply, so that a route
/// without one takes the same messages on every adapter (actix-ws's own
/// `AggregatedMessageStream` stops at 1 MiB). Frames adding up past it are closed with 1009
/// naming it.
pub const DEFAULT_MAX_CONTINUATION: usize = 64 << 20;

/// The largest frame the codec takes when the route sets no largest message: tungstenite's
/// default `max_frame_size`, 16 MiB, as on warp and axum (actix-ws's codec alone stops at
/// 64 KiB). A larger frame is answered with close 1009 naming this cap.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The frame cap of an actix-ws `MessageStream` left as it comes (its codec's default), assumed
/// for a stream given to [`LimitedMessageStream::new`] until
/// [`LimitedMessageStream::with_frame_cap`] says otherwise.
const ACTIX_WS_MAX_FRAME: usize = 64 * 1024;

/// `actix_ws::handle` with the connection's lease and message limits: the response to return, the
/// session to send with, and the limited stream of the client's messages, which holds the
/// connection's lease until it is dropped. With a largest message size, the codec's frame cap is
/// set to it, so a larger frame is never buffered (and is answered with close 1009); without
/// one, frames up to [`DEFAULT_MAX_FRAME`] and messages up to [`DEFAULT_MAX_CONTINUATION`] are
/// taken, tungstenite's defaults, as on the other adapters.
///
/// Fails with [`Error::NoWebSocketLimits`] (500) when the route has no WebSocket limits (the
/// middleware is missing), and as `actix_ws::handle` does when the request is not an upgrade.
pub fn handle(
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, Session, LimitedMessageStream), actix_web::Error> {
    // Cloned out of the extensions at once: the `RefCell` borrow ends here.
    let upgrade = req.extensions().get::<UpgradeLease>().cloned();
    let Some(upgrade) = upgrade else {
        tracing::error!("tollgate_actix::ws::handle used on a route without WebSocket limits");
        return Err(Error::NoWebSocketLimits.into());
    };
    let (response, session, stream) = actix_ws::handle(req, body)?;
    let frame_cap = upgrade.message_limits().frame_cap().unwrap_or(DEFAULT_MAX_FRAME);
    let limited = LimitedMessageStream::new(stream.max_frame_size(frame_cap), session.clone(), upgrade.gate())
        .with_frame_cap(frame_cap)
        .with_lease(upgrade.take());
    Ok((response, session, limited))
}

/// A send the stream must finish before reading on: an error frame, or the close frame.
type Sending = LocalBoxFuture<'static, ()>;

/// An actix-ws message stream whose incoming messages pass a [`MessageGate`] (see the
/// [module docs](self)). A `Stream` of the messages let through, like the stream it wraps (with
/// `recv` too); error and close frames go out through the session it was given. It holds the
/// connection's concurrency lease until it is dropped.
pub struct LimitedMessageStream<S = MessageStream, C: Clock = MonotonicClock> {
    inner: S,
    session: Session,
    gate: MessageGate<C>,
    lease: Option<ConnectionLease>,
    /// The inner stream's frame cap: what a close 1009 for a frame its codec refused names.
    frame_cap: usize,
    /// A fragmented message being put together: text or binary, and its frames so far.
    fragments: Option<(MessageKind, BytesMut)>,
    sending: Option<Sending>,
    delayed: Option<(Pin<Box<Sleep>>, Message)>,
    closing: bool,
    done: bool,
}

impl<S, C: Clock> fmt::Debug for LimitedMessageStream<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedMessageStream")
            .field("gate", &self.gate)
            .field("lease", &self.lease)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clock> LimitedMessageStream<S, C> {
    /// Limits the messages of `inner` with `gate` (e.g. [`UpgradeLease::gate`], or a gate of your
    /// own on a manual clock), sending error and close frames through `session`. The frame cap
    /// of `inner` is taken to be actix-ws's default (64 KiB): when it is set otherwise (e.g.
    /// `MessageStream::max_frame_size`), say so with [`LimitedMessageStream::with_frame_cap`].
    pub fn new(inner: S, session: Session, gate: MessageGate<C>) -> Self {
        Self {
            inner,
            session,
            gate,
            lease: None,
            frame_cap: ACTIX_WS_MAX_FRAME,
            fragments: None,
            sending: None,
            delayed: None,
            closing: false,
            done: false,
        }
    }

    /// Holds `lease` (a concurrency place, e.g. [`UpgradeLease::take`]) for as long as this stream
    /// lives.
    #[must_use]
    pub fn with_lease(mut self, lease: Option<ConnectionLease>) -> Self {
        self.lease = lease;
        self
    }

    /// The frame cap of the inner stream (e.g. the size given to `MessageStream::max_frame_size`):
    /// a frame its codec refuses is answered with close 1009 naming this cap (or the gate's largest
    /// message when that is smaller).
    #[must_use]
    pub fn with_frame_cap(mut self, cap: usize) -> Self {
        self.frame_cap = cap;
        self
    }

    /// The gate deciding the messages.
    pub fn gate(&self) -> &MessageGate<C> {
        &self.gate
    }

    /// The wrapped stream and the lease.
    pub fn into_parts(self) -> (S, Option<ConnectionLease>) {
        (self.inner, self.lease)
    }

    /// The largest fragmented message this stream puts together.
    fn continuation_cap(&self) -> usize {
        self.gate.limits().max_message_size.unwrap_or(DEFAULT_MAX_CONTINUATION)
    }

    /// Sends `frame` as the session's close frame; the stream then ends.
    fn close(&mut self, frame: &CloseFrame) {
        tracing::debug!(code = frame.code, reason = %frame.reason, "closing WebSocket over a limit");
        let session = self.session.clone();
        let reason = CloseReason { code: CloseCode::from(frame.code), description: Some(frame.reason.clone()) };
        self.sending = Some(Box::pin(async move {
            let _ = session.close(Some(reason)).await;
        }));
        self.closing = true;
        self.fragments = None;
    }

    /// Adds a continuation frame to the message being put together (over the largest message:
    /// the close frame to send).
    fn assemble(&mut self, item: Item) -> Result<(), Assembly> {
        let (kind, first) = match item {
            Item::FirstText(data) => (Some(MessageKind::Text), data),
            Item::FirstBinary(data) => (Some(MessageKind::Binary), data),
            Item::Continue(data) | Item::Last(data) => (None, data),
        };
        let cap = self.continuation_cap();
        match (kind, &mut self.fragments) {
            (Some(_), Some(_)) => return Err(Assembly::Protocol(ProtocolError::ContinuationStarted)),
            (None, None) => return Err(Assembly::Protocol(ProtocolError::ContinuationNotStarted)),
            (Some(kind), None) => self.fragments = Some((kind, BytesMut::new())),
            (None, Some(_)) => {}
        }
        let Some((_, buffer)) = self.fragments.as_mut() else { return Ok(()) };
        let len = buffer.len().saturating_add(first.len());
        if len > cap {
            return Err(Assembly::TooBig(self.gate.too_large(len, cap)));
        }
        buffer.extend_from_slice(&first);
        Ok(())
    }

    /// The message the frames put together, once `Last` came.
    fn finish_fragments(&mut self) -> Result<Message, ProtocolError> {
        let Some((kind, buffer)) = self.fragments.take() else {
            return Err(ProtocolError::ContinuationNotStarted);
        };
        let bytes = buffer.freeze();
        match kind {
            MessageKind::Text => ByteString::try_from(bytes).map(Message::Text).map_err(|_| {
                ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "a text message is not UTF-8"))
            }),
            _ => Ok(Message::Binary(bytes)),
        }
    }
}

/// Why a continuation frame was not taken.
enum Assembly {
    Protocol(ProtocolError),
    TooBig(CloseFrame),
}

impl<S, C> LimitedMessageStream<S, C>
where
    S: Stream<Item = Result<Message, ProtocolError>> + Unpin,
    C: Clock + Unpin,
{
    /// The next message let through, as `MessageStream::recv`: `None` once the client or a limit
    /// ended the session.
    pub async fn recv(&mut self) -> Option<Result<Message, ProtocolError>> {
        futures_util::StreamExt::next(self).await
    }
}

impl<S, C> Stream for LimitedMessageStream<S, C>
where
    S: Stream<Item = Result<Message, ProtocolError>> + Unpin,
    C: Clock + Unpin,
{
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is `Unpin` (the sleep and the sends are boxed).
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // First deliver what the gate wants sent (an error or close frame).
            if let Some(sending) = this.sending.as_mut() {
                ready!(sending.as_mut().poll(cx));
                this.sending = None;
                if this.closing {
                    this.done = true;
                    return Poll::Ready(None);
                }
                continue;
            }
            if let Some((sleep, _)) = this.delayed.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                if let Some((_, message)) = this.delayed.take() {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            let message = match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(message)) => message,
                Some(Err(ProtocolError::Overflow)) => {
                    // A frame over the codec's cap never reaches the gate; it is answered with the
                    // gate's 1009 all the same, not cut off, naming the cap that refused it.
                    let frame = this.gate.refused_by_socket(this.frame_cap);
                    this.close(&frame);
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            };
            let message = match message {
                Message::Continuation(item) => {
                    let last = matches!(item, Item::Last(_));
                    match this.assemble(item) {
                        Ok(()) if !last => continue,
                        Ok(()) => match this.finish_fragments() {
                            Ok(message) => message,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        },
                        Err(Assembly::TooBig(frame)) => {
                            this.close(&frame);
                            continue;
                        }
                        Err(Assembly::Protocol(e)) => return Poll::Ready(Some(Err(e))),
                    }
                }
                message => message,
            };
            let (kind, len, text) = match &message {
                Message::Text(text) => (MessageKind::Text, text.len(), Some(&**text)),
                Message::Binary(bytes) => (MessageKind::Binary, bytes.len(), None),
                Message::Ping(bytes) => (MessageKind::Ping, bytes.len(), None),
                Message::Pong(bytes) => (MessageKind::Pong, bytes.len(), None),
                Message::Close(_) => (MessageKind::Close, 0, None),
                Message::Continuation(_) | Message::Nop => return Poll::Ready(Some(Ok(message))),
            };
            match this.gate.check(kind, len, text) {
                Verdict::Allow => return Poll::Ready(Some(Ok(message))),
                Verdict::Delay(wait) => this.delayed = Some((Box::pin(tokio::time::sleep(wait)), message)),
                Verdict::Drop(refusal) => {
                    tracing::debug!(limit = %refusal.limit, "WebSocket message dropped");
                    let mut session = this.session.clone();
                    let frame = refusal.error_frame();
                    this.sending = Some(Box::pin(async move {
                        let _ = session.text(frame).await;
                    }));
                }
                Verdict::Close(frame) => this.close(&frame),
            }
        }
    }
}
