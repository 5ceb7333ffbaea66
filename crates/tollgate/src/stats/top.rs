//! The most refused keys: a space-saving table (Metwally, Agrawal and El Abbadi, 2005) of a
//! fixed number of keys, each key kept in a fixed-size copy, so that neither a flood of distinct
//! keys nor long ones can grow it.
//!
//! A key seen again has its count raised; a new key takes the place of the key with the least
//! count, inheriting that count as its possible error. Any key refused more than `1/CAPACITY` of
//! the time is in the table, and no count is under the key's true count.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::key::{Key, MAX_KEY_BYTES};

/// Keys one table holds.
pub(crate) const CAPACITY: usize = 64;

/// A refused key as the table keeps it: at most [`MAX_KEY_BYTES`] of it (a longer key is its
/// digest, as every store keeps it), with the limit that refused it and why.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyId {
    tag: u8,
    len: u8,
    bytes: [u8; MAX_KEY_BYTES],
    /// The limit's place in its policy (or the limiter's number), `u8::MAX` for none.
    limit: u8,
    /// The last reason the key was refused for.
    pub(crate) reason: &'static str,
}

const GLOBAL: u8 = 0;
const INT: u8 = 1;
const IP: u8 = 2;
const TEXT: u8 = 3;
const BYTES: u8 = 4;
const DIGEST: u8 = 5;

impl KeyId {
    /// `key` (bounded: see [`Key::bounded`]) refused by the limit at `limit` for `reason`.
    pub(crate) fn of(key: Key<'_>, limit: Option<usize>, reason: &'static str) -> Self {
        let mut id = KeyId {
            tag: GLOBAL,
            len: 0,
            bytes: [0; MAX_KEY_BYTES],
            limit: limit.and_then(|l| u8::try_from(l).ok()).unwrap_or(u8::MAX),
            reason,
        };
        let mut put = |tag: u8, bytes: &[u8]| {
            let n = bytes.len().min(MAX_KEY_BYTES);
            id.tag = tag;
            id.bytes[..n].copy_from_slice(&bytes[..n]);
            id.len = u8::try_from(n).unwrap_or(u8::MAX);
        };
        match key.bounded() {
            Key::Global => put(GLOBAL, &[]),
            Key::Int(n) => put(INT, &n.to_le_bytes()),
            Key::Ip(IpAddr::V4(ip)) => put(IP, &ip.octets()),
            Key::Ip(IpAddr::V6(ip)) => put(IP, &ip.octets()),
            Key::Text(s) => put(TEXT, s.as_bytes()),
            Key::Bytes(b) => put(BYTES, b),
            Key::Digest(d) => put(DIGEST, &d),
        }
        id
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether `other` is the same key refused by the same limit.
    fn same(&self, other: &KeyId) -> bool {
        self.tag == other.tag && self.limit == other.limit && self.bytes() == other.bytes()
    }

    /// The limit's place in its policy, if a limit refused.
    pub(crate) fn limit(&self) -> Option<usize> {
        (self.limit != u8::MAX).then_some(usize::from(self.limit))
    }

    /// The key as [`Key`]'s `Display` shows it (an address, text, escaped bytes, `sha256:...`).
    pub(crate) fn display(&self) -> String {
        let bytes = self.bytes();
        match self.tag {
            INT => <[u8; 8]>::try_from(bytes).map_or_else(|_| String::new(), |b| u64::from_le_bytes(b).to_string()),
            IP => match bytes.len() {
                4 => <[u8; 4]>::try_from(bytes).map(|b| Ipv4Addr::from(b).to_string()).unwrap_or_default(),
                _ => <[u8; 16]>::try_from(bytes).map(|b| Ipv6Addr::from(b).to_string()).unwrap_or_default(),
            },
            // Key::Text of these bytes: whole UTF-8 text, copied whole (it is bounded).
            TEXT => Key::Text(std::str::from_utf8(bytes).unwrap_or("")).to_string(),
            BYTES => Key::Bytes(bytes).to_string(),
            DIGEST => <[u8; 16]>::try_from(bytes).map(|d| Key::Digest(d).to_string()).unwrap_or_default(),
            _ => Key::Global.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: KeyId,
    count: u64,
    error: u64,
}

/// One space-saving table.
#[derive(Clone, Debug, Default)]
pub(crate) struct TopKeys {
    entries: Vec<Entry>,
}

impl TopKeys {
    /// Counts one refusal of `id`.
    pub(crate) fn record(&mut self, id: KeyId) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.id.same(&id)) {
            entry.count += 1;
            entry.id.reason = id.reason;
            return;
        }
        if self.entries.len() < CAPACITY {
            if self.entries.capacity() == 0 {
                self.entries.reserve_exact(CAPACITY);
            }
            self.entries.push(Entry { id, count: 1, error: 0 });
            return;
        }
        let Some(least) = self.entries.iter_mut().min_by_key(|e| e.count) else { return };
        *least = Entry { id, count: least.count + 1, error: least.count };
    }

    /// The least count a key missing from a full table may have had; 0 when not full.
    fn floor(&self) -> u64 {
        if self.entries.len() < CAPACITY { 0 } else { self.entries.iter().map(|e| e.count).min().unwrap_or(0) }
    }

    /// The tables as one: each key's count the sum of its counts (a table without it adding its
    /// floor, as much as the key may have had there), most counted first, at most [`CAPACITY`].
    pub(crate) fn merge(tables: &[TopKeys]) -> Vec<(KeyId, u64, u64)> {
        let mut merged: Vec<(KeyId, u64, u64)> = Vec::new();
        for table in tables {
            for entry in &table.entries {
                if merged.iter().any(|(id, ..)| id.same(&entry.id)) {
                    continue;
                }
                let (mut count, mut error) = (0, 0);
                for other in tables {
                    match other.entries.iter().find(|e| e.id.same(&entry.id)) {
                        Some(e) => {
                            count += e.count;
                            error += e.error;
                        }
                        None => {
                            count += other.floor();
                            error += other.floor();
                        }
                    }
                }
                merged.push((entry.id, count, error));
            }
        }
        // Most counted first; of equal counts, the surest (least error).
        merged.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        merged.truncate(CAPACITY);
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> KeyId {
        KeyId::of(Key::Text(text), Some(0), "rate_limited")
    }

    #[test]
    fn heavy_hitters_stay_under_a_flood_of_distinct_keys() {
        let mut table = TopKeys::default();
        for i in 0..100_000u32 {
            table.record(id(&format!("flood-{i}")));
            if i % 10 == 0 {
                table.record(id("attacker"));
            }
            if i % 25 == 0 {
                table.record(id("second"));
            }
        }
        assert_eq!(table.entries.len(), CAPACITY, "bounded");
        let top = TopKeys::merge(&[table]);
        assert_eq!(top[0].0.display(), "attacker");
        assert!(top[0].1 >= 10_000, "never under the true count: {}", top[0].1);
        assert_eq!(top[1].0.display(), "second");
    }

    #[test]
    fn long_keys_are_kept_as_their_digest() {
        let long = "k".repeat(100_000);
        let kept = KeyId::of(Key::Text(&long), None, "rate_limited");
        assert!(kept.display().starts_with("sha256:"));
        assert_eq!(kept.display(), Key::Text(&long).bounded().to_string());
        assert_eq!(std::mem::size_of::<KeyId>(), std::mem::size_of::<KeyId>().min(96), "fixed size");
    }

    #[test]
    fn keys_display_as_keys_do() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for key in [Key::Global, Key::Int(42), Key::Ip(ip), Key::Ip([192, 0, 2, 1].into()), Key::Bytes(b"a\x00b")] {
            assert_eq!(KeyId::of(key, None, "x").display(), key.to_string());
        }
    }

    #[test]
    fn merged_tables_add_up() {
        let (mut a, mut b) = (TopKeys::default(), TopKeys::default());
        for _ in 0..3 {
            a.record(id("x"));
            b.record(id("x"));
        }
        b.record(id("y"));
        let merged = TopKeys::merge(&[a, b]);
        assert_eq!(
            merged.iter().map(|(id, c, e)| (id.display(), *c, *e)).collect::<Vec<_>>(),
            [("x".to_owned(), 6, 0), ("y".to_owned(), 1, 0)]
        );
    }
}
