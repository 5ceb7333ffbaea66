//! Message limits shared by all the connections of one key.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::SmallVec;

use super::gate::KindLimit;
use crate::algorithm::lock;
use crate::algorithm::{gcra, nanos};
use crate::clock::{Clock, MonotonicClock};
use crate::key::{Key, OwnedKey};
use crate::quota::Quota;
use crate::store::DEFAULT_MAX_KEYS;
use crate::store::table::Table;

/// Message limits counted per key (per client) across **all** of that key's connections: a
/// client holding three sockets shares one quota among them, where the per-connection limits of
/// [`MessageLimits`](super::MessageLimits) give each socket its own.
///
/// Set through [`MessageLimits::per_key_messages`](super::MessageLimits::per_key_messages),
/// [`MessageLimits::per_key_bytes`](super::MessageLimits::per_key_bytes) and
/// [`MessageLimits::per_key_kind`](super::MessageLimits::per_key_kind); each connection's
/// [`MessageGate`](super::MessageGate) is told its key with
/// [`MessageGate::with_key`](super::MessageGate::with_key).
///
/// The state lives in this process's memory: one small entry per key holding one timestamp
/// (GCRA) per limit, all checked and spent under one lock, so a message passes all of its key's
/// limits or spends nothing. Idle keys are forgotten as the table grows, and at most
/// [`PerKeyLimits::max_keys`] keys are tracked: past that, messages of new keys are refused
/// (retry after a second; under [`MessageAction::Close`](super::MessageAction::Close) the
/// connection is closed with 1013, try again later) until keys fall idle. Clones share the state.
#[derive(Clone)]
pub struct PerKeyLimits {
    /// Messages (text and binary) per period per key.
    pub messages: Option<Quota>,
    /// Bytes of text and binary payload per period per key.
    pub bytes: Option<Quota>,
    /// Per-kind limits per key (the kind chosen by the [`MessageLimits`](super::MessageLimits)'
    /// classifier).
    pub kinds: Vec<KindLimit>,
    state: Arc<State>,
}

struct State {
    clock: Arc<dyn Clock>,
    max_keys: usize,
    /// Per key: the TATs of `[messages, bytes, kinds...]`.
    table: Table<OwnedKey, Mutex<Tats>>,
}

type Tats = SmallVec<[u64; 4]>;

impl fmt::Debug for PerKeyLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerKeyLimits")
            .field("messages", &self.messages)
            .field("bytes", &self.bytes)
            .field("kinds", &self.kinds)
            .field("max_keys", &self.state.max_keys)
            .field("keys", &self.state.table.len())
            .finish()
    }
}

impl Default for PerKeyLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// One per-key limit's share of a decision.
#[derive(Clone, Copy)]
pub(super) struct KeyStep {
    /// Index into the key's TATs.
    slot: usize,
    quota: Quota,
    cost: u32,
}

/// Index of the messages TAT; bytes follow, then the kinds.
const MESSAGES: usize = 0;
const BYTES: usize = 1;
const KINDS: usize = 2;

impl PerKeyLimits {
    /// No limit yet, on the default clock, tracking at most [`DEFAULT_MAX_KEYS`] keys.
    pub fn new() -> Self {
        Self::with_state(Arc::new(MonotonicClock::new()), DEFAULT_MAX_KEYS)
    }

    fn with_state(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        let shards = std::thread::available_parallelism().map_or(4, usize::from) * 4;
        let table = Table::new(shards, max_keys);
        Self { messages: None, bytes: None, kinds: Vec::new(), state: Arc::new(State { clock, max_keys, table }) }
    }

    /// The same limits on `clock` (e.g. a [`ManualClock`](crate::ManualClock) in tests), with
    /// fresh state.
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        let max_keys = self.state.max_keys;
        Self { state: Self::with_state(Arc::new(clock), max_keys).state, ..self }
    }

    /// The same limits tracking at most `max_keys` keys (at least 1), with fresh state.
    #[must_use]
    pub fn max_keys(self, max_keys: usize) -> Self {
        let clock = Arc::clone(&self.state.clock);
        Self { state: Self::with_state(clock, max_keys.max(1)).state, ..self }
    }

    /// These limits counting on with `previous`'s state: the messages and bytes each key sent
    /// under `previous` count against these quotas from the next message, when the two count the
    /// same things — each kind (by name) in the same place, the same bound on keys; otherwise
    /// these limits keep their own state (see [`PerKeyLimits::shares_state_with`]). Used when a
    /// new configuration replaces a running one ([`LiveEngine`](crate::live::LiveEngine)).
    ///
    /// ```
    /// use tollgate::websocket::PerKeyLimits;
    ///
    /// let old = PerKeyLimits::new();
    /// let mut new = PerKeyLimits::new();
    /// new.messages = Some("5/s".parse()?);
    /// let new = new.keeping_state_of(&old);
    /// assert!(new.shares_state_with(&old));
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[must_use]
    pub fn keeping_state_of(mut self, previous: &PerKeyLimits) -> Self {
        // Each key's timestamps are kept by place: messages, bytes, then the kinds in order. A
        // kind in another place would read another kind's timestamp; more or fewer kinds at
        // the end are room to grow into or places left unread.
        let same_places = self.kinds.iter().zip(&previous.kinds).all(|(a, b)| a.kind == b.kind);
        if same_places && self.state.max_keys == previous.state.max_keys {
            self.state = Arc::clone(&previous.state);
        }
        self
    }

    /// Whether `self` and `other` count in one state (clones, or one
    /// [keeping the state](Self::keeping_state_of) of the other).
    pub fn shares_state_with(&self, other: &PerKeyLimits) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The most keys tracked.
    pub fn key_capacity(&self) -> usize {
        self.state.max_keys
    }

    /// How many keys are tracked now (idle ones not yet forgotten included).
    pub fn tracked_keys(&self) -> usize {
        self.state.table.len()
    }

    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none() && self.kinds.is_empty()
    }

    pub(super) fn messages_step(&self) -> Option<KeyStep> {
        self.messages.map(|quota| KeyStep { slot: MESSAGES, quota, cost: 1 })
    }

    pub(super) fn bytes_step(&self, cost: u32) -> Option<KeyStep> {
        self.bytes.filter(|_| cost > 0).map(|quota| KeyStep { slot: BYTES, quota, cost })
    }

    pub(super) fn kind_step(&self, class: &str) -> Option<KeyStep> {
        let i = self.kinds.iter().position(|k| k.kind == class)?;
        Some(KeyStep { slot: KINDS + i, quota: self.kinds[i].quota, cost: 1 })
    }

    /// The name a refusal of `step` reports.
    pub(super) fn step_name(&self, step: &KeyStep) -> String {
        match step.slot {
            MESSAGES => "key_messages".to_owned(),
            BYTES => "key_bytes".to_owned(),
            i => self.kinds.get(i - KINDS).map_or_else(|| "key_kind".to_owned(), |k| k.kind.clone()),
        }
    }

    /// Decides the `steps` present for `key` now, for a message that goes no sooner than `after`
    /// from now (its connection's own limits may delay it), all-or-nothing: `Ok(wait)` when every
    /// step has room within `max_wait` — each spent at the time the message goes, `wait` from
    /// now — else why not, spending nothing.
    pub(super) fn check(
        &self,
        key: Key<'_>,
        steps: &[Option<KeyStep>],
        after: Duration,
        max_wait: u64,
    ) -> Result<Duration, KeyRefusal> {
        let Some(first) = steps.iter().flatten().next().copied() else { return Ok(after) };
        // This state's own clock: it is shared by connections, each gate reading a clock of its own.
        let now = self.state.clock.now();
        let at = now.saturating_add(nanos(after));
        let len = KINDS + self.kinds.len();
        let decided = self.state.table.with(&key, now, is_idle, |tats| {
            let mut tats = lock(tats);
            if tats.len() < len {
                tats.resize(len, 0);
            }
            // Every step is GCRA: each has room from a time of its own whatever `at` is, so the
            // message goes at the latest of those and `at`, and each step counts it then.
            let mut go = at;
            let mut new_tats: SmallVec<[u64; 4]> = SmallVec::new();
            let mut refused: Option<(KeyStep, Duration)> = None;
            for step in steps.iter().flatten() {
                let (snap, new_tat) = gcra::decide(tats[step.slot], &step.quota, now, at, step.cost, max_wait);
                new_tats.push(new_tat.unwrap_or(0));
                match new_tat {
                    Some(_) => go = go.max(now.saturating_add(nanos(snap.wait))),
                    None => {
                        if refused.is_none_or(|(_, r)| snap.retry_after > r) {
                            refused = Some((*step, snap.retry_after));
                        }
                    }
                }
            }
            if let Some((step, retry_after)) = refused {
                return Err(KeyRefusal::Over(step, retry_after));
            }
            // Going at `at` (the usual case), each step leaves what the first pass found; going
            // later, each is decided again at that time.
            for (step, first) in steps.iter().flatten().zip(new_tats) {
                let new_tat = if go == at {
                    Some(first)
                } else {
                    gcra::decide(tats[step.slot], &step.quota, now, go, step.cost, go - now).1
                };
                if let Some(tat) = new_tat {
                    tats[step.slot] = tat;
                }
            }
            Ok(Duration::from_nanos(go - now))
        });
        // Full of keys none of which is idle: new keys wait, as in the in-memory store.
        decided.unwrap_or(Err(KeyRefusal::Full(first)))
    }
}

/// Why [`PerKeyLimits::check`] refused a message.
#[derive(Clone, Copy)]
pub(super) enum KeyRefusal {
    /// Over this step's limit; it could pass after the duration.
    Over(KeyStep, Duration),
    /// The key is new and the table is full of keys none of which is idle: the server, not the
    /// client, is at its limit. Retry after a second (this step's name is reported).
    Full(KeyStep),
}

fn is_idle(tats: &Mutex<Tats>, now: u64) -> bool {
    lock(tats).iter().all(|t| *t <= now)
}
