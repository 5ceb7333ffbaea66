//! A sharded hash table of per-key state: a read lock and one atomic or mutex on the hot path
//! for a key already tracked, no allocation, idle keys swept as the table grows, and a cap.

use std::hash::{BuildHasher, Hash};
use std::sync::{PoisonError, RwLock};

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
    #[inline]
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

/// A shard on its own cache lines, so threads on different shards do not contend.
#[repr(align(128))]
struct Padded<T>(T);

type PaddedShard<K, S> = Padded<RwLock<Shard<K, S>>>;

struct Shard<K, S> {
    map: HashTable<(K, S)>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 256;

pub(crate) struct Table<K, S> {
    shards: Box<[PaddedShard<K, S>]>,
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
            .map(|_| Padded(RwLock::new(Shard { map: HashTable::new(), sweep_at: MIN_SWEEP.min(shard_cap) })))
            .collect();
        Self { shards, hasher: foldhash::fast::RandomState::default(), mask: (n - 1) as u64, shard_cap }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard<K, S>> {
        // hashbrown uses the low bits for the bucket and the top 7 for tags: take the middle.
        &self.shards[((hash >> 40) & self.mask) as usize].0
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
        {
            let guard = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, s)) = guard.map.find(hash, |(k, _)| key.matches(k)) {
                return Ok(f(s));
            }
        }
        let mut guard = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, s)) = guard.map.find(hash, |(k, _)| key.matches(k)) {
            return Ok(f(s));
        }
        if guard.map.len() >= guard.sweep_at || guard.map.len() >= self.shard_cap {
            guard.map.retain(|(_, s)| !idle(s, now));
            let len = guard.map.len();
            guard.sweep_at = len.saturating_mul(2).max(MIN_SWEEP).min(self.shard_cap);
            if len >= self.shard_cap {
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
        let guard = self.shard(hash).read().unwrap_or_else(PoisonError::into_inner);
        guard.map.find(hash, |(k, _)| key.matches(k)).map(|(_, s)| f(s))
    }

    /// Drops every idle state now.
    pub(crate) fn sweep(&self, now: u64, idle: impl Fn(&S, u64) -> bool) {
        for shard in self.shards.iter() {
            let mut guard = shard.0.write().unwrap_or_else(PoisonError::into_inner);
            guard.map.retain(|(_, s)| !idle(s, now));
            let len = guard.map.len();
            guard.sweep_at = len.saturating_mul(2).max(MIN_SWEEP).min(self.shard_cap);
        }
    }

    /// How many keys are tracked.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().unwrap_or_else(PoisonError::into_inner).map.len()).sum()
    }

    /// The most keys the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}
