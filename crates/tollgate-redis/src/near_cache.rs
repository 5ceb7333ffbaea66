//! The near cache: refusals answered by the instance itself (issue 23, item 2).
//!
//! A client over its limit tends to keep knocking; without this cache every knock costs a round
//! trip to Redis that can only say "refused" again. When Redis refuses a key with a retry-after
//! of `T`, the store remembers that refusal for `T` (measured on this instance's monotonic clock)
//! and answers later checks of the same key on the same limit itself, with the snapshot Redis
//! gave, its `retry_after` and `reset_after` counting down.
//!
//! # The rule: what is remembered, and what it answers
//!
//! A refusal is a fact about one limit and one client key (the Redis state key, which names the
//! prefix, policy, limit, algorithm and key). In a policy of several limits one refused limit
//! refuses the whole request, so one remembered refusal answers every batch that contains a check
//! it applies to. It is remembered only when it holds for every such check for its whole interval:
//!
//! - **Penalty blocks** (the snapshot has `blocked`, or [`Store::block`](tollgate::Store::block)
//!   succeeded): a block refuses every check of its key on its limit, whatever the cost, quota or
//!   wait, until it ends.
//! - **Rate refusals of a check of cost 1 in a batch where no limit delays** (every `max_wait`
//!   zero), answering only checks of cost 1 with the same quota, in batches where no limit delays.
//!   Such a batch goes now or never, so the refused limit refuses it until it has room now; and
//!   nobody can spend anything on that key before the refusal ends (cost 1 is the least there is),
//!   so the state does not change: Redis would answer each of these checks with the same `limit`
//!   and `remaining` and the same `retry_after`/`reset_after`, less the time passed. A larger cost
//!   is not remembered: a later check of a smaller cost could pass sooner, and smaller costs spent
//!   meanwhile would change the headers. A batch where a limit may delay is neither remembered nor
//!   answered: it goes when every limit has room, and a limit that refuses now may have room by
//!   then (see [`OnExceed::Delay`](tollgate::OnExceed::Delay)).
//!
//! Only refusals are remembered; an admission always comes from Redis.
//!
//! # Exactness and clocks
//!
//! The cache never compares this instance's clock with Redis's `TIME`: it adds Redis's
//! retry-after (a duration) to a local monotonic instant, so the offset between the clocks does
//! not matter (`tests/near_cache.rs` measures it anyway, and the README records it). A remembered
//! refusal ends at *the instant the request was sent* plus the retry-after, shortened by
//! [`DRIFT_PPM`] parts per million of it: Redis read its `TIME` after that instant, and the two
//! clocks may run at rates that differ by up to what NTP slews a clock, so the local end comes no
//! later than the instant Redis would admit the key. From then on checks go to Redis again,
//! which decides exactly. The headers count down from the instant Redis's answer arrived, as a
//! client counting Redis's own `Retry-After` would.
//!
//! The headers are Redis's unless a check of the same key with another quota (a tier), or one
//! that another limit delays, spends on it meanwhile: Redis would then give a later retry-after
//! than the cache, which refuses until its own, then asks Redis.
//!
//! What the cache cannot see makes it err on refusing, for at most the retry-after Redis gave:
//! Redis losing its state (a restart without persistence, a failover to a replica that missed the
//! writes), or, in a Redis Cluster, a batch whose commit on this key is refunded after another
//! slot refused it (see the crate docs). It never admits what Redis would refuse.
//!
//! In a batch answered from the cache, the refused entries of `out` are the remembered refusals,
//! counted down; the entries of the other checks, which were not asked, are [`Snapshot::EMPTY`].
//! The decision (refused, by the limit with the longest remembered wait) is Redis's, except that
//! a limit of the batch that started refusing meanwhile with a longer wait is not named until the
//! remembered refusal ends.
//!
//! # Bounds
//!
//! At most [`RedisStoreBuilder::near_cache_max_keys`](crate::RedisStoreBuilder::near_cache_max_keys)
//! refusals, in shards under a mutex each; expired ones are dropped when met and swept when a
//! shard is full. A refusal that finds its shard full of live ones is not remembered (that check
//! goes to Redis as if the cache were off), so a flood of distinct keys cannot grow memory.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tollgate::algorithm::capacity;
use tollgate::{Check, Quota, Snapshot};

use crate::keys::CheckKeys;
use crate::store::RedisLimit;

/// The default bound of the near cache: refused keys remembered at once.
pub const DEFAULT_NEAR_CACHE_MAX_KEYS: usize = 100_000;

/// The counter of batches the near cache answered without a round trip (feature `metrics`).
pub const NEAR_CACHE_HITS: &str = "tollgate_redis_near_cache_hits_total";

/// How much faster than Redis's clock this instance's clock may run, in parts per million: 500 is
/// the most the kernel slews a clock to follow NTP. A remembered refusal is shortened by as much.
pub const DRIFT_PPM: u64 = 500;

/// Shards of the cache (fewer when it holds fewer keys than this).
const SHARDS: usize = 16;

/// What the near cache did since the store was built ([`RedisStore::near_cache_stats`]).
///
/// [`RedisStore::near_cache_stats`]: crate::RedisStore::near_cache_stats
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Batches refused from the cache, without a round trip.
    pub hits: u64,
    /// Refusals remembered.
    pub stored: u64,
    /// Refusals not remembered because the cache was full of live ones.
    pub not_stored_full: u64,
    /// Refusals held now (expired ones count until they are swept).
    pub entries: usize,
}

/// One remembered refusal.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Local nanoseconds until which the refusal holds (exclusive).
    until: u64,
    /// Local nanoseconds when Redis's answer arrived: the snapshot counts down from here.
    seen: u64,
    refusal: Refusal,
}

#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// A penalty block, `retry` long at `seen`.
    Blocked { retry: Duration },
    /// A cost-1 check of `quota` in a batch where no limit delays, refused as `snapshot` at `seen`.
    Limited { quota: Quota, snapshot: Snapshot },
}

type Shard = HashMap<Box<[u8]>, Entry>;

/// Refusals remembered by one store (see the module docs).
#[derive(Debug)]
pub(crate) struct NearCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
    /// The origin of the local monotonic clock when the store reads Redis's time.
    epoch: Instant,
    hits: AtomicU64,
    stored: AtomicU64,
    full: AtomicU64,
    #[cfg(feature = "metrics")]
    counter: std::sync::OnceLock<metrics::Counter>,
}

impl NearCache {
    /// A cache of at most `max_keys` refusals (at least one).
    pub(crate) fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shards = SHARDS.min(max_keys);
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            per_shard: max_keys / shards,
            epoch: Instant::now(),
            hits: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            full: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            counter: std::sync::OnceLock::new(),
        }
    }

    /// The bound it was built with, rounded down to whole shards.
    pub(crate) fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Nanoseconds on the local monotonic clock.
    pub(crate) fn monotonic_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = usize::try_from(self.hasher.hash_one(key) % self.shards.len() as u64).unwrap_or(0);
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the batch at local time `now` when a check of it holds a live refusal: fills
    /// `out` (see the module docs) and returns `true`. Returns `false`, `out` untouched, otherwise.
    pub(crate) fn answer(
        &self,
        now: u64,
        checks: &[Check<'_, RedisLimit>],
        keys: &[CheckKeys],
        out: &mut [Snapshot],
    ) -> bool {
        let mut found = false;
        let goes_now = checks.iter().all(|c| c.max_wait.is_zero());
        for (i, (check, k)) in checks.iter().zip(keys).enumerate() {
            let refused = {
                let mut shard = self.shard(&k.state);
                match shard.get(k.state.as_slice()) {
                    Some(e) if e.until <= now => {
                        shard.remove(k.state.as_slice());
                        None
                    }
                    Some(e) => e.refuses(check, goes_now, now),
                    None => None,
                }
            };
            if let Some(snapshot) = refused {
                if !found {
                    out.fill(Snapshot::EMPTY);
                    found = true;
                }
                out[i] = snapshot;
            }
        }
        if found {
            self.hits.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            self.counter.get_or_init(|| metrics::counter!(NEAR_CACHE_HITS)).increment(1);
        }
        found
    }

    /// Remembers the refusals of a batch Redis refused: `sent` is the local time just before the
    /// request left, `seen` when the answer arrived; `drift` shortens each refusal by
    /// [`DRIFT_PPM`] (off with a test clock, which Redis's scripts read too).
    pub(crate) fn remember(
        &self,
        sent: u64,
        seen: u64,
        drift: bool,
        checks: &[Check<'_, RedisLimit>],
        keys: &[CheckKeys],
        out: &[Snapshot],
    ) {
        let goes_now = checks.iter().all(|c| c.max_wait.is_zero());
        for ((check, k), s) in checks.iter().zip(keys).zip(out) {
            if s.allowed || s.retry_after.is_zero() {
                continue;
            }
            let refusal = if s.blocked {
                Refusal::Blocked { retry: s.retry_after }
            } else if check.cost == 1 && goes_now {
                Refusal::Limited { quota: check.quota, snapshot: *s }
            } else {
                continue;
            };
            self.insert(&k.state, Entry { until: end(sent, s.retry_after, drift), seen, refusal });
        }
    }

    /// Remembers a penalty block of `duration` that Redis accepted (see [`NearCache::remember`]).
    pub(crate) fn remember_block(&self, sent: u64, seen: u64, drift: bool, keys: &CheckKeys, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        let entry = Entry { until: end(sent, duration, drift), seen, refusal: Refusal::Blocked { retry: duration } };
        self.insert(&keys.state, entry);
    }

    /// Forgets what is remembered of the state key `key` (its block lifted by an operator).
    pub(crate) fn forget(&self, key: &[u8]) {
        self.shard(key).remove(key);
    }

    fn insert(&self, key: &[u8], entry: Entry) {
        let mut shard = self.shard(key);
        if let Some(old) = shard.get_mut(key) {
            // Redis answers with a block while one lasts, whatever the rate state says, so a live
            // block gives way only to a longer one (a rate refusal answered before the block was
            // set may arrive after it). Otherwise the fresher refusal wins.
            let blocked = |e: &Entry| matches!(e.refusal, Refusal::Blocked { .. });
            if !blocked(old) || old.until <= entry.seen || (blocked(&entry) && entry.until > old.until) {
                *old = entry;
            }
            return;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.until > entry.seen);
            if shard.len() >= self.per_shard {
                drop(shard);
                self.full.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        shard.insert(key.into(), entry);
        drop(shard);
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            not_stored_full: self.full.load(Ordering::Relaxed),
            entries: self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum(),
        }
    }
}

/// The local end of a refusal of `retry` from a request sent at `sent`.
fn end(sent: u64, retry: Duration, drift: bool) -> u64 {
    let retry = u64::try_from(retry.as_nanos()).unwrap_or(u64::MAX);
    let margin = if drift { (retry / 1_000_000).saturating_mul(DRIFT_PPM).saturating_add(1) } else { 0 };
    sent.saturating_add(retry.saturating_sub(margin))
}

impl Entry {
    /// The snapshot Redis would give `check` at local time `now` (before `until`), when this
    /// refusal applies to it; `goes_now`: no limit of its batch may delay it.
    fn refuses(&self, check: &Check<'_, RedisLimit>, goes_now: bool, now: u64) -> Option<Snapshot> {
        let passed = Duration::from_nanos(now.saturating_sub(self.seen));
        match self.refusal {
            Refusal::Blocked { retry } => {
                let left = retry.saturating_sub(passed).max(Duration::from_nanos(1));
                Some(Snapshot {
                    allowed: false,
                    blocked: true,
                    limit: capacity(check.limit.algorithm, &check.quota),
                    remaining: 0,
                    reset_after: left,
                    retry_after: left,
                    wait: Duration::ZERO,
                })
            }
            Refusal::Limited { quota, snapshot } if goes_now && check.cost == 1 && check.quota == quota => {
                Some(Snapshot {
                    reset_after: snapshot.reset_after.saturating_sub(passed),
                    retry_after: snapshot.retry_after.saturating_sub(passed).max(Duration::from_nanos(1)),
                    ..snapshot
                })
            }
            Refusal::Limited { .. } => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_end_is_shortened_by_the_drift_margin_only_on_server_time() {
        let s = Duration::from_secs(1);
        assert_eq!(end(10, s, false), 10 + 1_000_000_000);
        // 500 ppm of a second is 0.5 ms (and a nanosecond, so a refusal never ends late).
        assert_eq!(end(10, s, true), 10 + 1_000_000_000 - 500_001);
        assert_eq!(end(u64::MAX - 1, s, false), u64::MAX);
    }

    #[test]
    fn bounded_by_whole_shards() {
        assert_eq!(NearCache::new(0).max_keys(), 1);
        assert_eq!(NearCache::new(5).max_keys(), 5);
        assert_eq!(NearCache::new(100).max_keys(), 96);
    }
}
