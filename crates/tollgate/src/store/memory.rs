//! The in-memory store: sharded, no allocation per check of a tracked key, idle keys evicted as
//! the table grows, and a cap on tracked keys.
//!
//! The first key each shard sees is kept for the life of the store, in a slot read without the
//! shard's lock (so that threads checking one key — a global or per-route limit — contend on its
//! state only): at most one such key per shard is never evicted.

use std::any::Any;
use std::fmt;
use std::future::{Future, ready};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::table::{Full, Table};
use super::{Check, LimitSpec, Store, StoreError};
use crate::algorithm::fixed_window::{FixedState, FixedWindow};
use crate::algorithm::gcra::Gcra;
use crate::algorithm::sliding_log::{LogState, SlidingLog};
use crate::algorithm::sliding_window::{SlidingWindow, WindowState};
use crate::algorithm::{Algorithm, Meter, Mode, Snapshot, capacity, d, nanos};
use crate::clock::{Clock, MonotonicClock};
use crate::key::{Key, OwnedKey};
use crate::quota::Quota;
use crate::stats::StoreHealth;

/// What the store does with a new key when it already tracks its maximum number of keys and
/// none of them is idle.
///
/// Tracked keys are never evicted before they are idle, so flooding the store with new keys
/// cannot erase a client's spent quota or its penalty block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnFull {
    /// Refuse checks of new keys (503, retry after one second; [`Reason::KeyTableFull`](crate::Reason::KeyTableFull))
    /// until keys fall idle. The default: under a flood of distinct keys, known clients keep
    /// their limits and new ones wait.
    #[default]
    Deny,
    /// Admit checks of new keys without tracking them.
    Allow,
}

/// The default store: state in this process's memory. Cheap to clone (clones share state).
///
/// ```
/// use tollgate::{MemoryStore, ManualClock};
///
/// let clock = ManualClock::new();
/// let store = MemoryStore::builder().clock(clock.clone()).max_keys(100_000).build();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    clock: StoreClock,
    shards: usize,
    max_keys: usize,
    on_full: OnFull,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards)
            .field("max_keys", &self.inner.max_keys)
            .field("on_full", &self.inner.on_full)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// The store's clock: the default one read directly, as every check reads it, and any other
/// through a pointer.
#[derive(Clone)]
enum StoreClock {
    Monotonic(MonotonicClock),
    Other(Arc<dyn Clock>),
}

impl StoreClock {
    fn of<C: Clock>(clock: C) -> Self {
        match (&clock as &dyn Any).downcast_ref::<MonotonicClock>() {
            Some(monotonic) => StoreClock::Monotonic(monotonic.clone()),
            None => StoreClock::Other(Arc::new(clock)),
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        match self {
            StoreClock::Monotonic(clock) => clock.now(),
            StoreClock::Other(clock) => clock.now(),
        }
    }
}

/// Builds a [`MemoryStore`].
#[derive(Clone)]
pub struct MemoryStoreBuilder {
    clock: StoreClock,
    shards: usize,
    max_keys: usize,
    on_full: OnFull,
}

impl fmt::Debug for MemoryStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("shards", &self.shards)
            .field("max_keys", &self.max_keys)
            .field("on_full", &self.on_full)
            .finish_non_exhaustive()
    }
}

/// Default cap on keys tracked per limit.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

impl MemoryStoreBuilder {
    /// The clock (default: [`MonotonicClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = StoreClock::of(clock);
        self
    }

    /// Shards per limit, rounded up to a power of two (default: 4 × available cores).
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// About how many keys each limit tracks at most (default [`DEFAULT_MAX_KEYS`]); see
    /// [`OnFull`]. The keys are spread over the [shards](MemoryStoreBuilder::shards), and each
    /// shard holds up to an eighth more than its even share, plus 16, so that uneven hashing does
    /// not refuse keys before `max_keys` are tracked: the bound on memory is
    /// `shards × (⌈max_keys / shards⌉ × 9/8 + 16)` keys (with 8 shards, `max_keys(1_000_000)`
    /// tracks at most 1,125,128; `max_keys(100)` at most 240).
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// What happens to new keys when the store is full.
    #[must_use]
    pub fn on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                clock: self.clock,
                shards: self.shards,
                max_keys: self.max_keys,
                on_full: self.on_full,
            }),
        }
    }
}

impl MemoryStore {
    /// A builder with the defaults.
    pub fn builder() -> MemoryStoreBuilder {
        let cores = std::thread::available_parallelism().map_or(4, usize::from);
        MemoryStoreBuilder {
            clock: StoreClock::Monotonic(MonotonicClock::new()),
            shards: cores * 4,
            max_keys: DEFAULT_MAX_KEYS,
            on_full: OnFull::default(),
        }
    }

    /// The store's clock reading now.
    #[inline]
    pub fn now(&self) -> u64 {
        self.inner.clock.now()
    }

    /// The synchronous form of [`Store::check`]: the in-memory store never waits.
    pub fn check_now(&self, checks: &[Check<'_, MemoryLimit>], out: &mut [Snapshot]) -> bool {
        let now = self.inner.clock.now();
        if let [one] = checks {
            out[0] = one.limit.apply(one, now, now, nanos(one.max_wait), Mode::Commit);
            return out[0].allowed;
        }
        let Some(at) = go_time(checks, out, now) else { return false };
        // Every limit counts the request at the time it goes, so each keeps its quota exactly.
        let exact = at - now;
        for i in 0..checks.len() {
            let s = checks[i].limit.apply(&checks[i], now, at, exact, Mode::Commit);
            out[i] = s;
            if !s.allowed {
                // Lost a race with a concurrent check after the peek: undo what was taken.
                for j in 0..i {
                    checks[j].limit.refund(&checks[j], now, &out[j]);
                }
                return false;
            }
        }
        true
    }
}

/// How many times [`settle`] moves the time a request goes before it gives up on it.
const ROUNDS: usize = 8;

/// When a request of several limits goes: `now` when each has room now; with the delay action,
/// the earliest time every limit has room for it, provided each limit waits no longer than its
/// own `max_wait` for the room it needs itself (a limit that rejects still lets through a request
/// that another limit holds back, when it has room by the time the request goes). `None`, with
/// the refusal in `out`, otherwise.
fn go_time(checks: &[Check<'_, MemoryLimit>], out: &mut [Snapshot], now: u64) -> Option<u64> {
    let bound = checks.iter().map(|c| nanos(c.max_wait)).max().unwrap_or(0);
    let at = settle(checks, None, out, now, bound)?;
    let wait = at - now;
    if wait == 0 {
        return Some(now);
    }
    for (i, c) in checks.iter().enumerate() {
        if wait <= nanos(c.max_wait) {
            continue;
        }
        // Longer than this limit waits: fine if the others hold the request back as long anyway.
        let others = settle(checks, Some(i), out, now, bound)?;
        if others < at {
            out[i] = c.limit.apply(c, now, now, nanos(c.max_wait), Mode::Peek);
            if out[i].allowed {
                // It has room now and only later ones make it wait: never the case for a limit
                // that moved the time, but refuse plainly rather than admit past its bound.
                out[i] = Snapshot { allowed: false, retry_after: d(wait), wait: Duration::ZERO, ..out[i] };
            }
            return None;
        }
    }
    Some(at)
}

/// The earliest time, from `now`, at which each check but `skip` has room for its request,
/// waiting no longer than `bound`: found by peeking at each limit from the latest time any of
/// them gave, until none moves it (each move is to a time some limit frees room, so it settles in
/// a round or two in practice). `None`, with the refusal in `out`, when one has no room within
/// `bound`, or when [`ROUNDS`] rounds did not settle.
fn settle(
    checks: &[Check<'_, MemoryLimit>],
    skip: Option<usize>,
    out: &mut [Snapshot],
    now: u64,
    bound: u64,
) -> Option<u64> {
    let mut at = now;
    for _ in 0..ROUNDS {
        let (mut next, mut all) = (at, true);
        for (i, (c, o)) in checks.iter().zip(out.iter_mut()).enumerate() {
            if skip == Some(i) {
                continue;
            }
            *o = c.limit.apply(c, now, at, bound, Mode::Peek);
            all &= o.allowed;
            next = next.max(now.saturating_add(nanos(o.wait)));
        }
        if !all {
            return None;
        }
        if next == at {
            return Some(at);
        }
        at = next;
    }
    // Unsettled: refuse, asking the caller back when the last round would have had it go.
    if let Some(o) = out.iter_mut().enumerate().find(|(i, _)| skip != Some(*i)).map(|(_, o)| o) {
        *o = Snapshot { allowed: false, retry_after: d(at - now), wait: Duration::ZERO, ..*o };
    }
    None
}

/// The in-memory state of one registered limit.
pub struct MemoryLimit {
    name: String,
    tables: Tables,
    blocks: Table<OwnedKey, AtomicU64>,
    any_block: AtomicBool,
    on_full: OnFull,
    /// When the last "store full" warning was logged, and how many new keys it turned away since:
    /// one line a second under a flood, not one per request.
    full_warned_at: AtomicU64,
    full_since_warning: AtomicU64,
}

impl fmt::Debug for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimit").field("name", &self.name).field("keys", &self.len()).finish_non_exhaustive()
    }
}

/// Runs `$body` on whichever table `$tables` holds, with `$t` bound to it and `$m` to its meter.
macro_rules! with_table {
    ($tables:expr, |$t:ident, $m:ident| $body:expr) => {
        match $tables {
            Tables::Gcra($t) => {
                type $m = Gcra;
                $body
            }
            Tables::Fixed($t) => {
                type $m = FixedWindow;
                $body
            }
            Tables::Sliding($t) => {
                type $m = SlidingWindow;
                $body
            }
            Tables::Log($t) => {
                type $m = SlidingLog;
                $body
            }
        }
    };
}

enum Tables {
    Gcra(Table<OwnedKey, AtomicU64>),
    Fixed(Table<OwnedKey, Mutex<FixedState>>),
    Sliding(Table<OwnedKey, Mutex<WindowState>>),
    Log(Table<OwnedKey, Mutex<LogState>>),
}

#[allow(clippy::too_many_arguments)]
fn run<M: Meter>(
    table: &Table<OwnedKey, M::State>,
    key: Key<'_>,
    quota: &Quota,
    now: u64,
    at: u64,
    cost: u32,
    max_wait: u64,
    mode: Mode,
) -> Result<Snapshot, Full> {
    table.with(&key, now, M::is_idle, |s| M::apply(s, quota, now, at, cost, max_wait, mode))
}

fn undo<M: Meter>(
    table: &Table<OwnedKey, M::State>,
    key: Key<'_>,
    quota: &Quota,
    now: u64,
    cost: u32,
    snap: &Snapshot,
) {
    table.get(&key, |s| M::refund(s, quota, now, cost, snap));
}

impl MemoryLimit {
    fn new(spec: &LimitSpec, shards: usize, max_keys: usize, on_full: OnFull) -> Self {
        let tables = match spec.algorithm {
            Algorithm::Gcra => Tables::Gcra(Table::new(shards, max_keys)),
            Algorithm::FixedWindow => Tables::Fixed(Table::new(shards, max_keys)),
            Algorithm::SlidingWindow => Tables::Sliding(Table::new(shards, max_keys)),
            Algorithm::SlidingLog => Tables::Log(Table::new(shards, max_keys)),
        };
        Self {
            name: spec.name.clone(),
            tables,
            blocks: Table::new(shards.min(16), max_keys),
            any_block: AtomicBool::new(false),
            on_full,
            full_warned_at: AtomicU64::new(0),
            full_since_warning: AtomicU64::new(0),
        }
    }

    /// Checks `c` at `now`, proceeding no earlier than `at`, waiting at most `max_wait` past `now`.
    fn apply(&self, c: &Check<'_, MemoryLimit>, now: u64, at: u64, max_wait: u64, mode: Mode) -> Snapshot {
        if self.any_block.load(Ordering::Relaxed)
            && let Some(blocked) = self.blocked(c, now)
        {
            return blocked;
        }
        let r = with_table!(&self.tables, |t, M| run::<M>(t, c.key, &c.quota, now, at, c.cost, max_wait, mode));
        r.unwrap_or_else(|Full| self.full(c, now))
    }

    /// [`MemoryLimit::apply`] committed, for a GCRA limit with no penalty block recorded: one
    /// table lookup and the meter, nothing else (the hot path of a policy with one limit).
    /// `None`, having changed nothing, for any other limit or standing (another algorithm, a
    /// block, a full table): `apply` decides those.
    #[inline]
    pub(crate) fn try_gcra(
        &self,
        key: Key<'_>,
        quota: &Quota,
        now: u64,
        cost: u32,
        max_wait: Duration,
    ) -> Option<Snapshot> {
        let Tables::Gcra(table) = &self.tables else { return None };
        if self.any_block.load(Ordering::Relaxed) {
            return None;
        }
        let max_wait = nanos(max_wait);
        run::<Gcra>(table, key, quota, now, now, cost, max_wait, Mode::Commit).ok()
    }

    /// The refusal of a key blocked by a penalty until after `now`.
    #[inline(never)]
    fn blocked(&self, c: &Check<'_, MemoryLimit>, now: u64) -> Option<Snapshot> {
        let until = self.blocks.get(&c.key, |u| u.load(Ordering::Acquire)).unwrap_or(0);
        (until > now).then(|| Snapshot {
            allowed: false,
            blocked: true,
            limit: capacity(self.algorithm(), &c.quota),
            remaining: 0,
            reset_after: d(until - now),
            retry_after: d(until - now),
            wait: d(0),
        })
    }

    /// The answer for a new key when the table is full and nothing in it is idle (see [`OnFull`]):
    /// nothing left, back in a second (the shape the policy looks for to tell it from a violation).
    #[cold]
    fn full(&self, c: &Check<'_, MemoryLimit>, now: u64) -> Snapshot {
        let allowed = self.on_full == OnFull::Allow;
        let turned_away = self.full_since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.full_warned_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1_000_000_000)
            && self.full_warned_at.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.full_since_warning.store(0, Ordering::Relaxed);
            tracing::warn!(
                limit = %self.name,
                new_keys = turned_away,
                on_full = ?self.on_full,
                "in-memory store full: new keys {} untracked (key_table_full); a flood of distinct keys, or max_keys too low",
                if allowed { "admitted" } else { "refused" },
            );
        }
        Snapshot {
            allowed,
            blocked: false,
            limit: capacity(self.algorithm(), &c.quota),
            remaining: 0,
            reset_after: Duration::from_secs(1),
            retry_after: if allowed { Duration::ZERO } else { Duration::from_secs(1) },
            wait: Duration::ZERO,
        }
    }

    fn refund(&self, c: &Check<'_, MemoryLimit>, now: u64, snap: &Snapshot) {
        with_table!(&self.tables, |t, M| undo::<M>(t, c.key, &c.quota, now, c.cost, snap));
    }

    fn algorithm(&self) -> Algorithm {
        match self.tables {
            Tables::Gcra(_) => Algorithm::Gcra,
            Tables::Fixed(_) => Algorithm::FixedWindow,
            Tables::Sliding(_) => Algorithm::SlidingWindow,
            Tables::Log(_) => Algorithm::SlidingLog,
        }
    }

    /// How many keys this limit tracks now (idle ones not yet swept included).
    pub fn len(&self) -> usize {
        with_table!(&self.tables, |t, _M| t.len())
    }

    /// Whether `key` has state in this limit (a key the store refused as full has none).
    pub(crate) fn tracks(&self, key: Key<'_>) -> bool {
        with_table!(&self.tables, |t, _M| t.get(&key, |_| ()).is_some())
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this limit tracks.
    pub fn capacity(&self) -> usize {
        with_table!(&self.tables, |t, _M| t.capacity())
    }

    /// Forgets every idle key now (this also happens by itself as the table grows), except the
    /// first key of each shard (see the module docs).
    pub fn sweep(&self, now: u64) {
        with_table!(&self.tables, |t, M| t.sweep(now, M::is_idle));
        self.blocks.sweep(now, |u, now| u.load(Ordering::Acquire) <= now);
    }
}

impl Store for MemoryStore {
    type Limit = MemoryLimit;

    fn register(&self, spec: &LimitSpec) -> Result<MemoryLimit, StoreError> {
        Ok(MemoryLimit::new(spec, self.inner.shards, self.inner.max_keys, self.inner.on_full))
    }

    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a, MemoryLimit>],
        out: &'a mut [Snapshot],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        ready(Ok(self.check_now(checks, out)))
    }

    fn try_check_now(
        &self,
        checks: &[Check<'_, MemoryLimit>],
        out: &mut [Snapshot],
    ) -> Option<Result<bool, StoreError>> {
        Some(Ok(self.check_now(checks, out)))
    }

    fn try_block_now(&self, limit: &MemoryLimit, key: Key<'_>, duration: Duration) -> Option<Result<(), StoreError>> {
        Some(self.block_now(limit, key, duration))
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::ok("memory").counter("max_keys_per_limit", u64::try_from(self.inner.max_keys).unwrap_or(u64::MAX))
    }

    fn tracked_keys(&self, limit: &MemoryLimit) -> Option<u64> {
        Some(u64::try_from(limit.len()).unwrap_or(u64::MAX))
    }

    fn block<'a>(
        &'a self,
        limit: &'a MemoryLimit,
        key: Key<'a>,
        duration: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        ready(self.block_now(limit, key, duration))
    }

    fn unblock<'a>(
        &'a self,
        limit: &'a MemoryLimit,
        key: Key<'a>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.unblock_now(limit, key);
        ready(Ok(()))
    }
}

impl MemoryStore {
    /// Blocks `key` on `limit` for `duration` at once (see [`Store::block`]).
    pub fn block_now(&self, limit: &MemoryLimit, key: Key<'_>, duration: Duration) -> Result<(), StoreError> {
        let now = self.inner.clock.now();
        let until = now.saturating_add(nanos(duration));
        let r = limit.blocks.with(
            &key,
            now,
            |u, now| u.load(Ordering::Acquire) <= now,
            |u| {
                u.fetch_max(until, Ordering::AcqRel);
            },
        );
        limit.any_block.store(true, Ordering::Release);
        r.map_err(|Full| StoreError::Full(limit.blocks.capacity()))
    }

    /// Lifts the block of `key` on `limit` at once (see [`Store::unblock`]). The entry stays
    /// until swept, ended: a block is over once its end is not after now.
    pub fn unblock_now(&self, limit: &MemoryLimit, key: Key<'_>) {
        limit.blocks.get(&key, |u| u.store(0, Ordering::Release));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn the_store_reads_the_clock_it_was_given() {
        let manual = ManualClock::at(5);
        let store = MemoryStore::builder().clock(manual.clone()).build();
        assert!(matches!(store.inner.clock, StoreClock::Other(_)));
        manual.advance(Duration::from_nanos(10));
        assert_eq!(store.now(), 15);

        // The default clock, given or not, is read without a virtual call.
        for store in [MemoryStore::default(), MemoryStore::builder().clock(MonotonicClock::new()).build()] {
            assert!(matches!(store.inner.clock, StoreClock::Monotonic(_)));
            let (a, b) = (store.now(), store.now());
            assert!(b >= a);
        }
    }
}
