//! A sharded hash table of per-key state: a read lock and one atomic or mutex on the hot path
//! for a key already tracked, no allocation, idle keys swept as the table grows, and a cap.
//!
//! Each shard also pins its first key in a slot read without the lock. Under a shared read lock,
//! threads checking one key contend on the lock word (two atomic writes per check) as well as on
//! the key's state; a global limit, or a route, is exactly that case. Finding the pinned key costs
//! them one atomic load of a line written once, so they contend only on the state itself.

use std::hash::{BuildHasher, Hash};
use std::sync::{OnceLock, PoisonError, RwLock};

use hashbrown::HashTable;

use crate::key::{Key, OwnedKey};

/// How a borrowed key finds the key stored for it; hashes must agree with the stored key's.
pub trait KeyLookup<K>: Hash {
    /// Whether `stored` is this key.
    fn matches(&self, stored: &K) -> bool;
    /// The key to store on first sight.
    fn to_stored(&self) -> K;
}

impl<K: Hash + Eq + Clone> KeyLookup<K> for K {
    #[inline]
    fn matches(&self, stored: &K) -> bool {
        self == stored
    }
    fn to_stored(&self) -> K {
        self.clone()
    }
}

impl KeyLookup<OwnedKey> for Key<'_> {
    #[inline(always)]
    fn matches(&self, stored: &OwnedKey) -> bool {
        Key::matches(self, stored)
    }
    fn to_stored(&self) -> OwnedKey {
        self.to_owned_key()
    }
}

impl KeyLookup<String> for str {
    #[inline]
    fn matches(&self, stored: &String) -> bool {
        self == stored
    }
    fn to_stored(&self) -> String {
        self.to_owned()
    }
}

/// The table is full and nothing in it is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// A value on cache lines of its own (128 bytes: the prefetcher pulls lines in pairs), so that
/// writes to it do not slow readers of its neighbours.
#[repr(align(128))]
struct Padded<T>(T);

/// A shard: its pinned key and its locked table, apart, so that checks of the pinned key do not
/// touch the lock and checks of the other keys do not touch the pinned state.
struct Shard<K, S> {
    pinned: OnceLock<Pinned<K, S>>,
    locked: Padded<RwLock<Keys<K, S>>>,
}

/// The first key a shard saw, kept for good: it is never evicted (so a slot read without a lock
/// can never hand out a state that a sweep has just dropped) and it counts towards the cap, which
/// costs at most one key per shard.
struct Pinned<K, S> {
    key: K,
    // Apart from the key, which other keys of the shard compare against while this state is written.
    state: Padded<S>,
}

struct Keys<K, S> {
    map: HashTable<(K, S)>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 256;

pub(crate) struct Table<K, S> {
    shards: Box<[Shard<K, S>]>,
    hasher: foldhash::fast::RandomState,
    mask: u64,
    shard_cap: usize,
}

impl<K, S> std::fmt::Debug for Table<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("shards", &self.shards.len()).field("shard_cap", &self.shard_cap).finish()
    }
}

impl<K: Hash, S: Default> Table<K, S> {
    /// `shards` is rounded up to a power of two; `max_keys` is spread over the shards, each
    /// allowed an eighth more than its even share (plus 16) so that uneven hashing does not
    /// refuse keys before the table holds `max_keys`.
    pub(crate) fn new(shards: usize, max_keys: usize) -> Self {
        let n = shards.clamp(1, 1 << 16).next_power_of_two();
        let even = max_keys.div_ceil(n).max(1);
        let shard_cap = even.saturating_add(even / 8).saturating_add(16);
        let shards = (0..n)
            .map(|_| Shard {
                pinned: OnceLock::new(),
                locked: Padded(RwLock::new(Keys { map: HashTable::new(), sweep_at: MIN_SWEEP.min(shard_cap - 1) })),
            })
            .collect();
        Self { shards, hasher: foldhash::fast::RandomState::default(), mask: (n - 1) as u64, shard_cap }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K, S> {
        // hashbrown uses the low bits for the bucket and the top 7 for tags: take the middle.
        &self.shards[((hash >> 40) & self.mask) as usize]
    }

    /// Runs `f` on the state of `key`, creating it when new. When the shard is at its cap, idle
    /// states (per `idle`) are dropped first; when none is, `Err(Full)`.
    #[inline]
    pub(crate) fn with<Q, R>(
        &self,
        key: &Q,
        now: u64,
        idle: impl Fn(&S, u64) -> bool,
        f: impl FnOnce(&S) -> R,
    ) -> Result<R, Full>
    where
        Q: KeyLookup<K> + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if let Some(p) = shard.pinned.get().filter(|p| key.matches(&p.key)) {
            return Ok(f(&p.state.0));
        }
        {
            let guard = shard.locked.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, s)) = guard.map.find(hash, |(k, _)| key.matches(k)) {
                return Ok(f(s));
            }
        }
        let mut guard = shard.locked.0.write().unwrap_or_else(PoisonError::into_inner);
        // Pinning happens under the write lock, so a key cannot be pinned by one thread while
        // another inserts it in the map; an empty slot means the shard has never held a key.
        let Some(p) = shard.pinned.get() else {
            let p = shard.pinned.get_or_init(|| Pinned { key: key.to_stored(), state: Padded(S::default()) });
            return Ok(f(&p.state.0));
        };
        if key.matches(&p.key) {
            return Ok(f(&p.state.0));
        }
        if let Some((_, s)) = guard.map.find(hash, |(k, _)| key.matches(k)) {
            return Ok(f(s));
        }
        // The pinned key takes one of the shard's places.
        let cap = self.shard_cap - 1;
        if guard.map.len() >= guard.sweep_at || guard.map.len() >= cap {
            guard.map.retain(|(_, s)| !idle(s, now));
            let len = guard.map.len();
            guard.sweep_at = len.saturating_mul(2).max(MIN_SWEEP).min(cap);
            if len >= cap {
                return Err(Full);
            }
        }
        let hasher = &self.hasher;
        let entry = guard.map.insert_unique(hash, (key.to_stored(), S::default()), |(k, _)| hasher.hash_one(k));
        Ok(f(&entry.get().1))
    }

    /// Runs `f` on the state of `key` when it is tracked.
    #[inline]
    pub(crate) fn get<Q, R>(&self, key: &Q, f: impl FnOnce(&S) -> R) -> Option<R>
    where
        Q: KeyLookup<K> + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        if let Some(p) = shard.pinned.get().filter(|p| key.matches(&p.key)) {
            return Some(f(&p.state.0));
        }
        let guard = shard.locked.0.read().unwrap_or_else(PoisonError::into_inner);
        guard.map.find(hash, |(k, _)| key.matches(k)).map(|(_, s)| f(s))
    }

    /// Drops every idle state now (pinned keys stay).
    pub(crate) fn sweep(&self, now: u64, idle: impl Fn(&S, u64) -> bool) {
        for shard in self.shards.iter() {
            let mut guard = shard.locked.0.write().unwrap_or_else(PoisonError::into_inner);
            guard.map.retain(|(_, s)| !idle(s, now));
            let len = guard.map.len();
            guard.sweep_at = len.saturating_mul(2).max(MIN_SWEEP).min(self.shard_cap - 1);
        }
    }

    /// How many keys are tracked, pinned ones included.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let pinned = usize::from(s.pinned.get().is_some());
                pinned + s.locked.0.read().unwrap_or_else(PoisonError::into_inner).map.len()
            })
            .sum()
    }

    /// The most keys the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    // Counts a check of `key`, never sweeping.
    fn count(table: &Table<u64, AtomicU64>, key: u64) -> Result<u64, Full> {
        table.with(&key, 0, |_, _| false, |s| s.fetch_add(1, Ordering::Relaxed) + 1)
    }

    // A counter is idle when it holds no more than `now`.
    fn idle_below(s: &AtomicU64, now: u64) -> bool {
        s.load(Ordering::Relaxed) <= now
    }

    #[test]
    fn the_first_key_of_a_shard_is_pinned_and_never_swept() {
        let table = Table::<u64, AtomicU64>::new(1, 100);
        for k in 0..10 {
            assert_eq!(count(&table, k), Ok(1));
        }
        assert_eq!(table.len(), 10);
        table.sweep(u64::MAX, idle_below);
        assert_eq!(table.len(), 1, "only the pinned key stays");
        assert_eq!(table.get(&0, |s| s.load(Ordering::Relaxed)), Some(1), "the pinned key keeps its state");
        assert_eq!(table.get(&1, |s| s.load(Ordering::Relaxed)), None);
        assert_eq!(count(&table, 0), Ok(2));
    }

    #[test]
    fn the_pinned_key_takes_a_place_under_the_cap() {
        // One shard of 1 + 16 places.
        let table = Table::<u64, AtomicU64>::new(1, 1);
        assert_eq!(table.capacity(), 17);
        for k in 0..17 {
            assert_eq!(count(&table, k), Ok(1), "key {k}");
        }
        assert_eq!(table.with(&17, 0, |_, _| false, |_| ()), Err(Full));
        assert_eq!(count(&table, 0), Ok(2), "tracked keys still pass");
        assert_eq!(count(&table, 16), Ok(2));
        // At 2 every counter is idle: the map empties for the new key, the pinned key stays.
        assert_eq!(table.with(&17, 2, idle_below, |_| ()), Ok(()));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn borrowed_keys_find_the_pinned_key() {
        let table = Table::<String, AtomicU64>::new(1, 100);
        assert_eq!(table.with("a", 0, |_, _| false, |s| s.fetch_add(1, Ordering::Relaxed)), Ok(0));
        assert_eq!(table.with("a", 0, |_, _| false, |s| s.fetch_add(1, Ordering::Relaxed)), Ok(1));
        assert_eq!(table.get("a", |s| s.load(Ordering::Relaxed)), Some(2));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn racing_threads_give_each_key_one_state() {
        const THREADS: u64 = 4;
        const KEYS: u64 = 64;
        const ROUNDS: u64 = 200;
        for _ in 0..20 {
            // Few shards, so threads race to pin and to insert in the same shard.
            let table = Table::<u64, AtomicU64>::new(2, 10_000);
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let table = &table;
                    scope.spawn(move || {
                        for r in 0..ROUNDS {
                            let _ = count(table, (r * 7 + t) % KEYS);
                        }
                    });
                }
            });
            let total: u64 = (0..KEYS).map(|k| table.get(&k, |s| s.load(Ordering::Relaxed)).unwrap_or(0)).sum();
            assert_eq!(total, THREADS * ROUNDS, "no check was counted on a state that got lost");
            assert_eq!(table.len(), KEYS as usize);
        }
    }
}
