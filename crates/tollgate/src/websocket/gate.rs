//! The per-connection message gate.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::classifier::Classifier;
use super::per_key::{KeyRefusal, KeyStep, PerKeyLimits};
use super::{CloseFrame, MessageKind, Refusal, Verdict, close_code};
use crate::algorithm::gcra;
use crate::clock::{Clock, MonotonicClock};
use crate::key::{Key, OwnedKey};
use crate::observe::WebSocketMetrics;
use crate::quota::Quota;

/// What happens to a message over a rate or byte limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageAction {
    /// Drop the message and send the client a JSON error frame. The default.
    #[default]
    Drop,
    /// Hold the message until it fits, waiting at most `max_wait`; past that, drop it as
    /// [`MessageAction::Drop`] does.
    Delay {
        /// The longest a message is held.
        max_wait: Duration,
    },
    /// Close the connection with [`close_code::RATE_LIMITED`].
    Close,
}

/// A limit on the messages of one kind (see [`Classifier`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindLimit {
    /// The kind, as the classifier names it.
    pub kind: String,
    /// Messages of that kind per period.
    pub quota: Quota,
}

/// The limits applied to each connection's messages, and to each key's messages across its
/// connections ([`MessageLimits::per_key`]). Build once, share as `Arc<MessageLimits>` by every
/// connection's [`MessageGate`] (clones share the per-key state).
#[derive(Clone)]
pub struct MessageLimits {
    /// Messages (text and binary) per period.
    pub messages: Option<Quota>,
    /// Bytes of text and binary payload per period.
    pub bytes: Option<Quota>,
    /// The largest message in bytes; larger ones close the connection with 1009.
    pub max_message_size: Option<usize>,
    /// Per-kind limits, applied on top of `messages`.
    pub kinds: Vec<KindLimit>,
    /// Picks a text message's kind.
    pub classifier: Option<Arc<dyn Classifier>>,
    /// Pings and pongs per period (they are not messages, but must not flood). Over it the
    /// connection is closed with 1008. `None` leaves them unlimited.
    pub control: Option<Quota>,
    /// What happens over a rate or byte limit.
    pub on_exceed: MessageAction,
    /// Limits shared by all the connections of one key (see [`PerKeyLimits`]), with the same
    /// action over them.
    pub per_key: Option<PerKeyLimits>,
}

impl fmt::Debug for MessageLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageLimits")
            .field("messages", &self.messages)
            .field("bytes", &self.bytes)
            .field("max_message_size", &self.max_message_size)
            .field("kinds", &self.kinds)
            .field("classifier", &self.classifier.as_ref().map(|_| "..."))
            .field("control", &self.control)
            .field("on_exceed", &self.on_exceed)
            .field("per_key", &self.per_key)
            .finish()
    }
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// The default cap on pings and pongs: 10 per second, burst 20.
pub const DEFAULT_CONTROL_QUOTA: Quota = match NonZeroU32::new(10) {
    Some(n) => match NonZeroU32::new(20) {
        Some(b) => Quota::per_second(n).with_burst(b),
        None => Quota::per_second(n),
    },
    None => unreachable_quota(),
};

const fn unreachable_quota() -> Quota {
    Quota::per_second(NonZeroU32::MIN)
}

impl MessageLimits {
    /// No message limit; pings and pongs capped at [`DEFAULT_CONTROL_QUOTA`]; action drop.
    pub fn new() -> Self {
        Self {
            messages: None,
            bytes: None,
            max_message_size: None,
            kinds: Vec::new(),
            classifier: None,
            control: Some(DEFAULT_CONTROL_QUOTA),
            on_exceed: MessageAction::Drop,
            per_key: None,
        }
    }

    /// Limits messages per period.
    #[must_use]
    pub fn messages(mut self, quota: Quota) -> Self {
        self.messages = Some(quota);
        self
    }

    /// Limits payload bytes per period.
    #[must_use]
    pub fn bytes(mut self, quota: Quota) -> Self {
        self.bytes = Some(quota);
        self
    }

    /// Limits the size of one message.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// The frame cap a socket should apply for these limits: the largest message, but never
    /// below [`MAX_CONTROL_PAYLOAD`](super::MAX_CONTROL_PAYLOAD), as a socket's frame cap applies
    /// to pings, pongs and closes too, which the protocol lets carry 125 bytes whatever the
    /// limit. `None` without a largest message (the socket's own default then).
    pub fn frame_cap(&self) -> Option<usize> {
        self.max_message_size.map(|max| max.max(super::MAX_CONTROL_PAYLOAD))
    }

    /// Limits the messages of `kind` (as named by the classifier).
    #[must_use]
    pub fn kind(mut self, kind: impl Into<String>, quota: Quota) -> Self {
        self.kinds.push(KindLimit { kind: kind.into(), quota });
        self
    }

    /// Sets the classifier choosing a text message's kind.
    #[must_use]
    pub fn classifier(mut self, classifier: impl Classifier) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Caps pings and pongs (`None`: unlimited).
    #[must_use]
    pub fn control(mut self, quota: Option<Quota>) -> Self {
        self.control = quota;
        self
    }

    /// What happens over a rate or byte limit.
    #[must_use]
    pub fn on_exceed(mut self, action: MessageAction) -> Self {
        self.on_exceed = action;
        self
    }

    /// Limits messages per period per key, across all of the key's connections (refusals name
    /// the limit `key_messages`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{ManualClock, OwnedKey};
    /// use tollgate::websocket::{MessageGate, MessageKind, MessageLimits, Verdict};
    ///
    /// let clock = ManualClock::new();
    /// let limits = Arc::new(
    ///     MessageLimits::new()
    ///         .messages("10/min".parse()?)
    ///         .per_key_messages("3/min".parse()?)
    ///         .per_key_clock(clock.clone()),
    /// );
    /// // Two connections of one client, one of another.
    /// let alice = OwnedKey::from("alice");
    /// let mut a1 = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(alice.clone());
    /// let mut a2 = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(alice);
    /// let mut bob = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(OwnedKey::from("bob"));
    ///
    /// assert_eq!(a1.check(MessageKind::Text, 2, Some("hi")), Verdict::Allow);
    /// assert_eq!(a1.check(MessageKind::Text, 2, Some("hi")), Verdict::Allow);
    /// assert_eq!(a2.check(MessageKind::Text, 2, Some("hi")), Verdict::Allow);
    /// // alice's fourth message is refused on her second socket: the quota is per key.
    /// let Verdict::Drop(refusal) = a2.check(MessageKind::Text, 2, Some("hi")) else { panic!() };
    /// assert_eq!(refusal.error_frame(), r#"{"error":"rate_limited","limit":"key_messages","retry_after":20}"#);
    /// // bob has his own.
    /// assert_eq!(bob.check(MessageKind::Text, 2, Some("hi")), Verdict::Allow);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[must_use]
    pub fn per_key_messages(mut self, quota: Quota) -> Self {
        self.per_key.get_or_insert_with(PerKeyLimits::new).messages = Some(quota);
        self
    }

    /// Limits payload bytes per period per key, across all of the key's connections (refusals
    /// name the limit `key_bytes`; a message larger than the quota's burst closes with 1009).
    #[must_use]
    pub fn per_key_bytes(mut self, quota: Quota) -> Self {
        self.per_key.get_or_insert_with(PerKeyLimits::new).bytes = Some(quota);
        self
    }

    /// Limits the messages of `kind` (as named by the classifier) per key, across all of the
    /// key's connections (refusals name the kind).
    #[must_use]
    pub fn per_key_kind(mut self, kind: impl Into<String>, quota: Quota) -> Self {
        let kind = kind.into();
        let per_key = self.per_key.get_or_insert_with(PerKeyLimits::new);
        match per_key.kinds.iter_mut().find(|k| k.kind == kind) {
            Some(existing) => existing.quota = quota,
            None => per_key.kinds.push(KindLimit { kind, quota }),
        }
        self
    }

    /// Runs the per-key limits on `clock` (default: a [`MonotonicClock`]; the per-key state is
    /// shared by connections, so it has a clock of its own). Starts their state afresh.
    #[must_use]
    pub fn per_key_clock(mut self, clock: impl Clock) -> Self {
        self.per_key = Some(self.per_key.take().unwrap_or_default().clock(clock));
        self
    }

    /// Tracks at most `max_keys` keys for the per-key limits (default
    /// [`crate::store::DEFAULT_MAX_KEYS`]). Starts their state afresh.
    #[must_use]
    pub fn per_key_max_keys(mut self, max_keys: usize) -> Self {
        self.per_key = Some(self.per_key.take().unwrap_or_default().max_keys(max_keys));
        self
    }

    /// These limits with the per-key state of `previous` (see [`PerKeyLimits::keeping_state_of`]):
    /// a new configuration's limits of a WebSocket route counting on with the running one's.
    /// Open connections keep the limits they were opened with; each connection's own counters
    /// live in its gate.
    #[must_use]
    pub fn keeping_state_of(mut self, previous: &MessageLimits) -> Self {
        if let Some(old) = &previous.per_key {
            self.per_key = self.per_key.map(|new| new.keeping_state_of(old));
        }
        self
    }

    /// Whether text messages need classifying: a classifier and some per-kind limit.
    fn classifies(&self) -> bool {
        self.classifier.is_some()
            && (!self.kinds.is_empty() || self.per_key.as_ref().is_some_and(|p| !p.kinds.is_empty()))
    }
}

impl MessageLimits {
    /// The message limits of a `[[websocket]]` entry of the configuration.
    pub fn from_config(config: &crate::config::WebSocketConfig) -> Self {
        use crate::config::MessageAction as Action;
        let mut limits = MessageLimits::new();
        limits.messages = config.messages;
        limits.bytes = config.bytes;
        limits.max_message_size = config.max_message.map(|b| usize::try_from(b.0).unwrap_or(usize::MAX));
        limits.on_exceed = match config.on_exceed {
            Action::Drop => MessageAction::Drop,
            Action::Close => MessageAction::Close,
            Action::Delay => {
                MessageAction::Delay { max_wait: config.max_delay.map_or(Duration::from_secs(1), |d| d.0) }
            }
        };
        if let Some(quota) = config.key_messages {
            limits = limits.per_key_messages(quota);
        }
        if let Some(quota) = config.key_bytes {
            limits = limits.per_key_bytes(quota);
        }
        if !config.kinds.is_empty() {
            let mut classifier = super::JsonFieldClassifier::default();
            for kind in &config.kinds {
                classifier = classifier.rule(&kind.field, &kind.equals, &kind.name);
                if let Some(quota) = kind.quota {
                    limits.kinds.push(KindLimit { kind: kind.name.clone(), quota });
                }
                if let Some(quota) = kind.key_quota {
                    limits = limits.per_key_kind(kind.name.clone(), quota);
                }
            }
            limits.classifier = Some(Arc::new(classifier));
        }
        limits
    }
}

/// One connection's message limiter: decides each message with [`MessageGate::check`].
///
/// The per-connection state is a few timestamps owned by the connection (no locks, no allocation
/// per message); it goes away with the connection. The per-key limits
/// ([`MessageLimits::per_key`]) are counted under the key given by [`MessageGate::with_key`] —
/// without one, every such gate shares one key, so leaving it out cannot dodge them.
pub struct MessageGate<C: Clock = MonotonicClock> {
    limits: Arc<MessageLimits>,
    key: Option<OwnedKey>,
    clock: C,
    messages: u64,
    bytes: u64,
    control: u64,
    kinds: Vec<u64>,
    metrics: WebSocketMetrics,
}

impl<C: Clock> fmt::Debug for MessageGate<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageGate").field("limits", &self.limits).field("key", &self.key).finish_non_exhaustive()
    }
}

impl MessageGate {
    /// A gate on the default clock.
    pub fn new(limits: Arc<MessageLimits>) -> Self {
        Self::with_clock(limits, MonotonicClock::new())
    }
}

/// One limit's share of a decision.
struct Step {
    slot: Slot,
    quota: Quota,
    cost: u32,
}

#[derive(Clone, Copy)]
enum Slot {
    Messages,
    Bytes,
    Kind(usize),
}

impl<C: Clock> MessageGate<C> {
    /// A gate on `clock`.
    pub fn with_clock(limits: Arc<MessageLimits>, clock: C) -> Self {
        let kinds = vec![0; limits.kinds.len()];
        Self {
            limits,
            key: None,
            clock,
            messages: 0,
            bytes: 0,
            control: 0,
            kinds,
            metrics: WebSocketMetrics::default(),
        }
    }

    /// Counts this connection's messages under `key` for the per-key limits (the client the
    /// connection belongs to: its address, identity, API key...).
    #[must_use]
    pub fn with_key(mut self, key: OwnedKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The limits applied.
    pub fn limits(&self) -> &Arc<MessageLimits> {
        &self.limits
    }

    /// The key of the per-key limits, if one was given.
    pub fn key(&self) -> Option<&OwnedKey> {
        self.key.as_ref()
    }

    /// Decides one message the client sent: its kind, its payload length in bytes, and for text
    /// its content (for the classifier; `None` skips classification).
    pub fn check(&mut self, kind: MessageKind, len: usize, text: Option<&str>) -> Verdict {
        let verdict = self.decide(kind, len, text);
        self.metrics.verdict(kind, &verdict);
        verdict
    }

    /// The close frame (1009) for a message of `len` bytes that the socket itself refused as
    /// larger than its own cap `cap` (e.g. tungstenite's `max_message_size`), so it never reached
    /// [`MessageGate::check`]: the limit it reports is this gate's largest message when that is
    /// smaller.
    pub fn too_large(&self, len: usize, cap: usize) -> CloseFrame {
        let max = self.limits.max_message_size.map_or(cap, |max| max.min(cap));
        crate::observe::websocket_close(close_code::MESSAGE_TOO_BIG);
        CloseFrame::message_too_big(len, max)
    }

    /// The close frame (1009) for a message the socket refused as larger than its own cap `cap`
    /// without saying how large it was (a codec that stops reading at its cap): as
    /// [`MessageGate::too_large`], its reason naming the limit only.
    pub fn refused_by_socket(&self, cap: usize) -> CloseFrame {
        let max = self.limits.max_message_size.map_or(cap, |max| max.min(cap));
        crate::observe::websocket_close(close_code::MESSAGE_TOO_BIG);
        CloseFrame::new(close_code::MESSAGE_TOO_BIG, &format!("message over the limit of {max} bytes"))
    }

    fn decide(&mut self, kind: MessageKind, len: usize, text: Option<&str>) -> Verdict {
        let now = self.clock.now();
        match kind {
            MessageKind::Close => return Verdict::Allow,
            MessageKind::Ping | MessageKind::Pong => {
                let Some(quota) = self.limits.control else { return Verdict::Allow };
                let (_, new_tat) = gcra::decide(self.control, &quota, now, now, 1, 0);
                return match new_tat {
                    Some(tat) => {
                        self.control = tat;
                        Verdict::Allow
                    }
                    None => Verdict::Close(CloseFrame::new(close_code::POLICY_VIOLATION, "too many pings or pongs")),
                };
            }
            MessageKind::Text | MessageKind::Binary => {}
        }
        if let Some(max) = self.limits.max_message_size.filter(|max| len > *max) {
            return too_big(len, max);
        }
        let limits = Arc::clone(&self.limits);
        let cost = u32::try_from(len).unwrap_or(u32::MAX);
        let mut steps: [Option<Step>; 3] = [None, None, None];
        if let Some(quota) = limits.messages {
            steps[0] = Some(Step { slot: Slot::Messages, quota, cost: 1 });
        }
        if let Some(quota) = limits.bytes.filter(|_| cost > 0) {
            if cost > quota.burst().get() {
                // It could never pass.
                return too_big(len, quota.burst().get() as usize);
            }
            steps[1] = Some(Step { slot: Slot::Bytes, quota, cost });
        }
        let per_key = limits.per_key.as_ref().filter(|p| !p.is_empty());
        let mut key_steps: [Option<KeyStep>; 3] = [None, None, None];
        if let Some(per_key) = per_key {
            key_steps[0] = per_key.messages_step();
            key_steps[1] = per_key.bytes_step(cost);
            if let Some(quota) = per_key.bytes.filter(|q| cost > q.burst().get()) {
                return too_big(len, quota.burst().get() as usize);
            }
        }
        let class = match (&limits.classifier, text) {
            (Some(classifier), Some(text)) if limits.classifies() => classifier.classify(text),
            _ => None,
        };
        if let Some(class) = class {
            if let Some(i) = limits.kinds.iter().position(|k| k.kind == class) {
                steps[2] = Some(Step { slot: Slot::Kind(i), quota: limits.kinds[i].quota, cost: 1 });
            }
            key_steps[2] = per_key.and_then(|p| p.kind_step(class));
        }
        let max_wait = match limits.on_exceed {
            MessageAction::Delay { max_wait } => crate::algorithm::nanos(max_wait),
            _ => 0,
        };
        // All-or-nothing: decide every step of this connection first, then the key's (which
        // spend only when all of them pass, at the time the message goes), then commit this
        // connection's at that time too, or none. Every step is GCRA, whose room comes at a time
        // of its own whatever the others say, so the message goes at the latest of those times.
        let mut new_tats = [0u64; 3];
        let mut wait = Duration::ZERO;
        let mut refused: Option<Refusal> = None;
        for (i, step) in steps.iter().enumerate() {
            let Some(step) = step else { continue };
            let (snap, new_tat) = gcra::decide(self.tat(step.slot), &step.quota, now, now, step.cost, max_wait);
            match new_tat {
                Some(t) => {
                    new_tats[i] = t;
                    wait = wait.max(snap.wait);
                }
                None => {
                    if refused.as_ref().is_none_or(|r| snap.retry_after > r.retry_after) {
                        let limit = match step.slot {
                            Slot::Messages => "messages".to_owned(),
                            Slot::Bytes => "bytes".to_owned(),
                            Slot::Kind(k) => limits.kinds[k].kind.clone(),
                        };
                        refused = Some(Refusal { limit, retry_after: snap.retry_after });
                    }
                }
            }
        }
        let mut full = false;
        if refused.is_none()
            && let Some(per_key) = per_key
        {
            let key = self.key.as_ref().map_or(MISSING_KEY, OwnedKey::as_key);
            match per_key.check(key, &key_steps, wait, max_wait) {
                Ok(key_wait) => wait = wait.max(key_wait),
                Err(KeyRefusal::Over(step, retry_after)) => {
                    refused = Some(Refusal { limit: per_key.step_name(&step), retry_after });
                }
                Err(KeyRefusal::Full(step)) => {
                    full = true;
                    refused = Some(Refusal { limit: per_key.step_name(&step), retry_after: Duration::from_secs(1) });
                }
            }
        }
        if let Some(refusal) = refused {
            return match limits.on_exceed {
                MessageAction::Close if full => Verdict::Close(CloseFrame::new(
                    close_code::TRY_AGAIN_LATER,
                    "server busy: too many clients to track, try again later",
                )),
                MessageAction::Close => {
                    let reason =
                        format!("rate limited: {} (retry after {}s)", refusal.limit, refusal.retry_after_secs());
                    Verdict::Close(CloseFrame::new(close_code::RATE_LIMITED, &reason))
                }
                MessageAction::Drop | MessageAction::Delay { .. } => Verdict::Drop(refusal),
            };
        }
        // Going now (the usual case), each step leaves what the first pass found; going later,
        // each is decided again at that time.
        let go = now.saturating_add(crate::algorithm::nanos(wait));
        for (i, step) in steps.iter().enumerate() {
            let Some(step) = step else { continue };
            let new_tat = if go == now {
                Some(new_tats[i])
            } else {
                gcra::decide(self.tat(step.slot), &step.quota, now, go, step.cost, go - now).1
            };
            if let Some(tat) = new_tat {
                *self.tat_mut(step.slot) = tat;
            }
        }
        if wait.is_zero() { Verdict::Allow } else { Verdict::Delay(wait) }
    }

    fn tat(&self, slot: Slot) -> u64 {
        match slot {
            Slot::Messages => self.messages,
            Slot::Bytes => self.bytes,
            Slot::Kind(i) => self.kinds.get(i).copied().unwrap_or(0),
        }
    }

    fn tat_mut(&mut self, slot: Slot) -> &mut u64 {
        match slot {
            Slot::Messages => &mut self.messages,
            Slot::Bytes => &mut self.bytes,
            Slot::Kind(i) => {
                if i >= self.kinds.len() {
                    self.kinds.resize(i + 1, 0);
                }
                &mut self.kinds[i]
            }
        }
    }
}

/// The key of gates given none: all of them share it (as a policy's `MissingKey::Shared`).
const MISSING_KEY: Key<'static> = Key::Text("\u{0}missing");

fn too_big(len: usize, max: usize) -> Verdict {
    Verdict::Close(CloseFrame::message_too_big(len, max))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::websocket::JsonFieldClassifier;

    fn q(s: &str) -> Quota {
        s.parse().unwrap()
    }

    fn demo_limits() -> MessageLimits {
        MessageLimits::new()
            .messages(q("20/10s"))
            .bytes(q("256KiB/min"))
            .max_message_size(16 * 1024)
            .kind("catch_up", q("2/min"))
            .classifier(JsonFieldClassifier::new("action", ["catch_up"]))
    }

    fn gate(limits: MessageLimits) -> (MessageGate<ManualClock>, ManualClock) {
        let clock = ManualClock::at(1_000_000_000_000);
        (MessageGate::with_clock(Arc::new(limits), clock.clone()), clock)
    }

    fn text(g: &mut MessageGate<ManualClock>, s: &str) -> Verdict {
        g.check(MessageKind::Text, s.len(), Some(s))
    }

    #[test]
    fn message_rate_drops_with_error_frame_and_recovers() {
        let (mut g, clock) = gate(demo_limits());
        for _ in 0..20 {
            assert_eq!(text(&mut g, "hi"), Verdict::Allow);
        }
        let Verdict::Drop(r) = text(&mut g, "hi") else { panic!("expected a drop") };
        assert_eq!(r.limit, "messages");
        assert_eq!(r.retry_after, Duration::from_millis(500));
        assert_eq!(r.error_frame(), r#"{"error":"rate_limited","limit":"messages","retry_after":1}"#);
        clock.advance(Duration::from_millis(500));
        assert_eq!(text(&mut g, "hi"), Verdict::Allow);
        assert!(matches!(text(&mut g, "hi"), Verdict::Drop(_)));
    }

    #[test]
    fn oversized_message_closes_1009() {
        let (mut g, _) = gate(demo_limits());
        let Verdict::Close(c) = g.check(MessageKind::Binary, 16 * 1024 + 1, None) else { panic!() };
        assert_eq!(c.code, 1009);
        assert_eq!(g.check(MessageKind::Binary, 16 * 1024, None), Verdict::Allow);
    }

    #[test]
    fn bytes_per_period() {
        let (mut g, clock) = gate(MessageLimits::new().bytes(q("1000/min")));
        assert_eq!(g.check(MessageKind::Binary, 600, None), Verdict::Allow);
        let Verdict::Drop(r) = g.check(MessageKind::Binary, 600, None) else { panic!() };
        assert_eq!(r.limit, "bytes");
        // 200 bytes short, at 60 ms per byte.
        assert_eq!(r.retry_after, Duration::from_secs(12));
        assert_eq!(g.check(MessageKind::Binary, 400, None), Verdict::Allow);
        clock.advance(Duration::from_secs(36));
        assert_eq!(g.check(MessageKind::Binary, 600, None), Verdict::Allow);
        // A message that could never fit closes with 1009.
        assert!(matches!(g.check(MessageKind::Binary, 1001, None), Verdict::Close(c) if c.code == 1009));
    }

    #[test]
    fn per_kind_limit_is_all_or_nothing() {
        let (mut g, clock) = gate(demo_limits());
        let catch_up = r#"{"action":"catch_up","since":1}"#;
        assert_eq!(text(&mut g, catch_up), Verdict::Allow);
        assert_eq!(text(&mut g, catch_up), Verdict::Allow);
        let Verdict::Drop(r) = text(&mut g, catch_up) else { panic!() };
        assert_eq!(r.limit, "catch_up");
        assert_eq!(r.retry_after_secs(), 30);
        // The refused catch_up spent nothing of the message quota: 18 ordinary messages remain.
        for _ in 0..18 {
            assert_eq!(text(&mut g, r#"{"action":"say"}"#), Verdict::Allow);
        }
        assert!(matches!(text(&mut g, "x"), Verdict::Drop(r) if r.limit == "messages"));
        clock.advance(Duration::from_secs(30));
        assert_eq!(text(&mut g, catch_up), Verdict::Allow);
    }

    #[test]
    fn pings_are_not_messages_but_cannot_flood() {
        let (mut g, _) = gate(MessageLimits::new().messages(q("1/min")).control(Some(q("5/s"))));
        for _ in 0..5 {
            assert_eq!(g.check(MessageKind::Ping, 4, None), Verdict::Allow);
        }
        let Verdict::Close(c) = g.check(MessageKind::Pong, 4, None) else { panic!() };
        assert_eq!(c.code, close_code::POLICY_VIOLATION);
        assert_eq!(text(&mut g, "still allowed"), Verdict::Allow);
        assert_eq!(g.check(MessageKind::Close, 2, None), Verdict::Allow);
    }

    #[test]
    fn close_action_uses_4429() {
        let (mut g, _) = gate(MessageLimits::new().messages(q("1/min")).on_exceed(MessageAction::Close));
        assert_eq!(text(&mut g, "a"), Verdict::Allow);
        let Verdict::Close(c) = text(&mut g, "a") else { panic!() };
        assert_eq!(c.code, close_code::RATE_LIMITED);
        assert_eq!(c.reason, "rate limited: messages (retry after 60s)");
    }

    /// Gates of `keys` sharing `limits` and one manual clock (per-key state included).
    fn keyed_gates(limits: MessageLimits, keys: &[&str]) -> (Vec<MessageGate<ManualClock>>, ManualClock) {
        let clock = ManualClock::at(1_000_000_000_000);
        let limits = Arc::new(limits.per_key_clock(clock.clone()));
        let gates = keys
            .iter()
            .map(|k| MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(OwnedKey::from(*k)))
            .collect();
        (gates, clock)
    }

    #[test]
    fn per_key_messages_are_shared_by_the_keys_connections() {
        let limits = MessageLimits::new().messages(q("10/min")).per_key_messages(q("3/min"));
        let (mut g, clock) = keyed_gates(limits, &["alice", "alice", "bob"]);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[1], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        let Verdict::Drop(r) = text(&mut g[1], "a") else { panic!("alice's key quota is spent") };
        assert_eq!(r.limit, "key_messages");
        assert_eq!(r.retry_after, Duration::from_secs(20));
        assert!(matches!(text(&mut g[0], "a"), Verdict::Drop(r) if r.limit == "key_messages"));
        for _ in 0..3 {
            assert_eq!(text(&mut g[2], "b"), Verdict::Allow, "bob has his own quota");
        }
        clock.advance(Duration::from_secs(20));
        assert_eq!(text(&mut g[1], "a"), Verdict::Allow);
    }

    #[test]
    fn a_refusal_per_connection_spends_nothing_per_key_and_back() {
        // The connection's own limit refuses: the key's quota is untouched.
        let limits = MessageLimits::new().messages(q("1/min")).per_key_messages(q("3/min"));
        let (mut g, _) = keyed_gates(limits, &["alice", "alice", "alice"]);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        assert!(matches!(text(&mut g[0], "a"), Verdict::Drop(r) if r.limit == "messages"));
        assert_eq!(text(&mut g[1], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[2], "a"), Verdict::Allow);

        // The key's limit refuses: the connection's quota is untouched.
        let limits = MessageLimits::new().messages(q("2/hour")).per_key_messages(q("2/min"));
        let (mut g, clock) = keyed_gates(limits, &["alice", "alice"]);
        assert_eq!(text(&mut g[1], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[1], "a"), Verdict::Allow);
        assert!(matches!(text(&mut g[0], "a"), Verdict::Drop(r) if r.limit == "key_messages"));
        clock.advance(Duration::from_secs(60));
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow, "the refused message spent none of 2/hour");
    }

    #[test]
    fn per_key_bytes_and_kinds() {
        let limits = MessageLimits::new()
            .per_key_bytes(q("1000/min"))
            .per_key_kind("catch_up", q("1/min"))
            .classifier(JsonFieldClassifier::new("action", ["catch_up"]));
        let (mut g, _) = keyed_gates(limits, &["alice", "alice", "bob"]);
        assert_eq!(g[0].check(MessageKind::Binary, 600, None), Verdict::Allow);
        assert!(matches!(g[1].check(MessageKind::Binary, 600, None), Verdict::Drop(r) if r.limit == "key_bytes"));
        assert_eq!(g[1].check(MessageKind::Binary, 400, None), Verdict::Allow);
        // Larger than the key's whole byte burst: it could never pass.
        assert!(matches!(g[2].check(MessageKind::Binary, 1001, None), Verdict::Close(c) if c.code == 1009));
        let catch_up = r#"{"action":"catch_up"}"#;
        assert_eq!(text(&mut g[2], catch_up), Verdict::Allow);
        let Verdict::Drop(r) = text(&mut g[2], catch_up) else { panic!() };
        assert_eq!((r.limit.as_str(), r.retry_after_secs()), ("catch_up", 60));
        assert!(matches!(text(&mut g[0], catch_up), Verdict::Drop(r) if r.limit == "key_bytes"));
    }

    #[test]
    fn per_key_close_and_delay_actions() {
        let limits = MessageLimits::new().per_key_messages(q("1/min")).on_exceed(MessageAction::Close);
        let (mut g, _) = keyed_gates(limits, &["alice", "alice"]);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        let Verdict::Close(c) = text(&mut g[1], "a") else { panic!() };
        assert_eq!(c.code, close_code::RATE_LIMITED);
        assert_eq!(c.reason, "rate limited: key_messages (retry after 60s)");

        let limits = MessageLimits::new()
            .per_key_messages(q("1/s"))
            .on_exceed(MessageAction::Delay { max_wait: Duration::from_secs(1) });
        let (mut g, _) = keyed_gates(limits, &["alice", "alice"]);
        assert_eq!(text(&mut g[0], "a"), Verdict::Allow);
        assert_eq!(text(&mut g[1], "a"), Verdict::Delay(Duration::from_secs(1)));
        assert!(matches!(text(&mut g[0], "a"), Verdict::Drop(r) if r.retry_after == Duration::from_secs(2)));
    }

    #[test]
    fn gates_without_a_key_share_one() {
        let clock = ManualClock::at(1_000_000_000_000);
        let limits = Arc::new(MessageLimits::new().per_key_messages(q("1/min")).per_key_clock(clock.clone()));
        let mut a = MessageGate::with_clock(Arc::clone(&limits), clock.clone());
        let mut b = MessageGate::with_clock(Arc::clone(&limits), clock.clone());
        assert_eq!(text(&mut a, "a"), Verdict::Allow);
        assert!(matches!(text(&mut b, "b"), Verdict::Drop(r) if r.limit == "key_messages"));
    }

    #[test]
    fn idle_keys_are_forgotten_and_the_key_cap_holds() {
        let clock = ManualClock::at(1_000_000_000_000);
        let limits = Arc::new(
            MessageLimits::new().per_key_messages(q("1/s")).per_key_max_keys(100).per_key_clock(clock.clone()),
        );
        let per_key = limits.per_key.as_ref().unwrap();
        assert_eq!(per_key.key_capacity(), 100);
        let mut refused = 0;
        for i in 0..20_000u64 {
            let mut g = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(OwnedKey::from(i));
            if let Verdict::Drop(r) = g.check(MessageKind::Binary, 1, None) {
                assert_eq!(r.retry_after, Duration::from_secs(1), "new keys wait while the table is full");
                refused += 1;
            }
        }
        assert!(refused > 0, "a flood of distinct keys is capped");
        assert!(per_key.tracked_keys() <= 20_000 - refused);
        clock.advance(Duration::from_secs(2));
        let mut g = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(OwnedKey::from(u64::MAX));
        assert_eq!(g.check(MessageKind::Binary, 1, None), Verdict::Allow, "idle keys make room");
    }

    #[test]
    fn a_full_key_table_closes_1013_under_the_close_action() {
        // The server cannot track one more client: try again later, not "rate limited".
        let clock = ManualClock::at(1_000_000_000_000);
        let limits = Arc::new(
            MessageLimits::new()
                .per_key_messages(q("1/min"))
                .per_key_max_keys(100)
                .per_key_clock(clock.clone())
                .on_exceed(MessageAction::Close),
        );
        let gate = |key: u64| MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(OwnedKey::from(key));
        let mut busy = 0;
        for key in 0..20_000u64 {
            match gate(key).check(MessageKind::Binary, 1, None) {
                Verdict::Allow => {}
                Verdict::Close(c) => {
                    assert_eq!(c.code, close_code::TRY_AGAIN_LATER, "{c:?}");
                    assert_eq!(c.reason, "server busy: too many clients to track, try again later");
                    busy += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(busy > 0, "the table filled up");
        // A tracked client over its own limit is rate limited (4429), as before.
        let Verdict::Close(c) = gate(0).check(MessageKind::Binary, 1, None) else { panic!("key 0 is over 1/min") };
        assert_eq!(c.code, close_code::RATE_LIMITED);
        clock.advance(Duration::from_secs(60));
        assert_eq!(gate(u64::MAX).check(MessageKind::Binary, 1, None), Verdict::Allow, "idle keys make room");
    }

    #[test]
    fn delay_action_waits_up_to_its_bound() {
        let limits = MessageLimits::new()
            .messages(q("1/s"))
            .on_exceed(MessageAction::Delay { max_wait: Duration::from_secs(2) });
        let (mut g, _) = gate(limits);
        assert_eq!(text(&mut g, "a"), Verdict::Allow);
        assert_eq!(text(&mut g, "a"), Verdict::Delay(Duration::from_secs(1)));
        assert_eq!(text(&mut g, "a"), Verdict::Delay(Duration::from_secs(2)));
        assert!(matches!(text(&mut g, "a"), Verdict::Drop(r) if r.retry_after == Duration::from_secs(3)));
    }

    /// A message its connection's limit holds back is counted by the key's limits when it goes
    /// (issue 22, item 5): the key's other socket cannot slip a message in just before it.
    #[test]
    fn delayed_messages_count_against_the_key_when_they_go() {
        let clock = ManualClock::at(1_000_000_000_000);
        let limits = Arc::new(
            MessageLimits::new()
                .messages(q("1/s"))
                .per_key_messages(q("10/s burst 1"))
                .per_key_clock(clock.clone())
                .on_exceed(MessageAction::Delay { max_wait: Duration::from_secs(2) }),
        );
        let alice = OwnedKey::from("alice");
        let mut a1 = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(alice.clone());
        let mut a2 = MessageGate::with_clock(Arc::clone(&limits), clock.clone()).with_key(alice);
        assert_eq!(text(&mut a1, "1"), Verdict::Allow);
        // Its connection holds the second back a second; the key counts it then, not now.
        assert_eq!(text(&mut a1, "2"), Verdict::Delay(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(950));
        // The other socket's message goes 0.1 s after the held one, as the key's 10/s says (it
        // went at 0.95 s, 0.05 s before it, when the key counted the held one on arrival).
        assert_eq!(text(&mut a2, "3"), Verdict::Delay(Duration::from_millis(150)));
    }
}
