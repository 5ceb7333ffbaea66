//! WebSocket message limits, decided per message for one connection.
//!
//! Adapters wrap their framework's socket and ask a [`MessageGate`] about every message the client
//! sends; the gate answers with a [`Verdict`]: let it through, delay it, drop it and answer with a
//! JSON error frame, or close the connection with a [`CloseFrame`]. The arithmetic (GCRA, the same
//! as the HTTP limits) lives here once, so every adapter behaves alike.
//!
//! What is limited, per connection ([`MessageLimits`]):
//! - the largest message (over it: close `1009`, whatever the action);
//! - messages per period and bytes per period (all-or-nothing: a refused message spends nothing);
//! - per-kind limits, the kind chosen by a [`Classifier`] on text messages (e.g. JSON whose
//!   `action` is `catch_up`);
//! - pings and pongs: not counted as messages, but capped by their own quota (over it: close
//!   `1008`), so they cannot flood either. Close frames always pass.
//!
//! And per key, across all of a key's connections ([`PerKeyLimits`], e.g.
//! [`MessageLimits::per_key_messages`]): messages, bytes and per-kind limits shared by every
//! connection of one client, so that opening more sockets does not multiply its quota. The gate
//! learns its connection's key from [`MessageGate::with_key`]. A message passes only if it
//! passes every per-connection and per-key limit, and a refused one spends nothing from any.
//!
//! Close codes: [`close_code::MESSAGE_TOO_BIG`] (1009), [`close_code::POLICY_VIOLATION`] (1008),
//! [`close_code::RATE_LIMITED`] (4429, ours: a message rate or byte limit was exceeded and the
//! configured action is to close) and [`close_code::TRY_AGAIN_LATER`] (1013: under the close
//! action, a new client's key could not be tracked, the per-key table being full of active keys).
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{ManualClock, Quota};
//! use tollgate::websocket::{MessageGate, MessageKind, MessageLimits, Verdict};
//!
//! let clock = ManualClock::new();
//! let limits = MessageLimits::new().messages("2/10s".parse()?).max_message_size(16 * 1024);
//! let mut gate = MessageGate::with_clock(limits.into(), clock.clone());
//! assert_eq!(gate.check(MessageKind::Text, 5, Some("hello")), Verdict::Allow);
//! assert_eq!(gate.check(MessageKind::Text, 5, Some("hello")), Verdict::Allow);
//! let Verdict::Drop(refusal) = gate.check(MessageKind::Text, 5, Some("hello")) else { panic!() };
//! assert_eq!(refusal.error_frame(), r#"{"error":"rate_limited","limit":"messages","retry_after":5}"#);
//! assert!(matches!(gate.check(MessageKind::Binary, 20_000, None), Verdict::Close(c) if c.code == 1009));
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(gate.check(MessageKind::Text, 5, Some("hello")), Verdict::Allow);
//! # Ok::<(), tollgate::Error>(())
//! ```

mod classifier;
mod gate;
mod per_key;
#[cfg(feature = "socket")]
mod socket;
mod upgrade;

pub use classifier::{Classifier, JsonFieldClassifier};
pub use gate::{DEFAULT_CONTROL_QUOTA, KindLimit, MessageAction, MessageGate, MessageLimits};
pub use per_key::PerKeyLimits;
#[cfg(feature = "socket")]
pub use socket::{LimitedSocket, SocketMessages};
pub use upgrade::UpgradeLease;

use std::time::Duration;

use crate::decision::ceil_secs;

/// WebSocket close codes the gates use.
pub mod close_code {
    /// 1008: the client broke a policy (e.g. flooding pings).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1009: a message was larger than allowed.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// 1013: the server is overloaded; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// 4429: a message rate or byte limit was exceeded and the action is to close. In the
    /// application range (4000–4999); mirrors HTTP 429.
    pub const RATE_LIMITED: u16 = 4429;
}

/// The largest payload of a control frame (ping, pong, close; RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The most bytes a close frame's reason may hold (the control payload minus the 2-byte code).
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// What kind of frame a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A text message.
    Text,
    /// A binary message.
    Binary,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// What to do with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Let it through after this long (the delay action); the capacity is already reserved.
    Delay(Duration),
    /// Drop it and send the client [`Refusal::error_frame`] as a text message.
    Drop(Refusal),
    /// Send this close frame and end the connection.
    Close(CloseFrame),
}

/// A message refused by a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The limit's name: `messages`, `bytes`, or a kind such as `catch_up`.
    pub limit: String,
    /// How long until the same message could pass.
    pub retry_after: Duration,
}

impl Refusal {
    /// Whole seconds until a retry could pass, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// The JSON error frame: `{"error":"rate_limited","limit":"messages","retry_after":3}`.
    pub fn error_frame(&self) -> String {
        serde_json::json!({"error": "rate_limited", "limit": self.limit, "retry_after": self.retry_after_secs()})
            .to_string()
    }
}

/// A close frame to send: a code and a reason that fits the protocol's 123 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code (see [`close_code`]).
    pub code: u16,
    /// Why, at most [`MAX_CLOSE_REASON`] bytes.
    pub reason: String,
}

impl CloseFrame {
    /// A close frame, its reason cut to [`MAX_CLOSE_REASON`] bytes on a character boundary.
    pub fn new(code: u16, reason: &str) -> Self {
        Self { code, reason: truncate_reason(reason).to_owned() }
    }

    /// The close frame for a message of `len` bytes over a limit of `max`:
    /// [`close_code::MESSAGE_TOO_BIG`] (1009), what the gate sends and what an adapter sends when
    /// the socket itself refused a message as too large.
    pub fn message_too_big(len: usize, max: usize) -> Self {
        Self::new(close_code::MESSAGE_TOO_BIG, &format!("message of {len} bytes over the limit of {max}"))
    }
}

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes, on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_reason("short"), "short");
        let exact = "a".repeat(123);
        assert_eq!(truncate_reason(&exact), exact);
        assert_eq!(CloseFrame::new(1008, &"x".repeat(500)).reason.len(), 123);
    }

    #[test]
    fn error_frame_shape() {
        let r = Refusal { limit: "catch_up".into(), retry_after: Duration::from_millis(29_001) };
        assert_eq!(r.error_frame(), r#"{"error":"rate_limited","limit":"catch_up","retry_after":30}"#);
        let r = Refusal { limit: "m\"x".into(), retry_after: Duration::ZERO };
        assert_eq!(r.error_frame(), r#"{"error":"rate_limited","limit":"m\"x","retry_after":1}"#);
    }
}
