//! Keys: what a limit counts by.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};

/// A key to count by, borrowed: checking a key never allocates. The store keeps an [`OwnedKey`]
/// the first time it sees one.
///
/// `Key` and [`OwnedKey`] hash and compare alike, so a `Key` finds the state stored under the
/// equal `OwnedKey`.
///
/// **Long keys are kept as their digest.** Text or bytes longer than [`MAX_KEY_BYTES`] (a
/// client's 100 KB header value, say) count as the first 128 bits of their SHA-256
/// ([`Key::Digest`]) in every store — the in-memory tables, the concurrency and WebSocket per-key
/// tables, and Redis key names — so a tracked key never takes more than a few dozen bytes
/// whatever a client sends. SHA-256 rather than a fast keyed hash: the digest must be the same in
/// every instance sharing a Redis store, and no client can find two values with one digest
/// (2^64 work for a collision of 128 bits) to merge or split keys at will. [`KeyKind`](crate::KeyKind)
/// resolves a request's long key to its digest once; a long `Text` or `Bytes` key given directly
/// hashes, compares and stores as that same digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// One key for everyone.
    Global,
    /// An integer, such as a user or tenant id.
    Int(u64),
    /// A client address (see [`Key::ip_grouped`] for IPv6 prefixes).
    Ip(IpAddr),
    /// Text, such as a user name, an API key or a route.
    Text(&'a str),
    /// Bytes of any value and length, such as a raw header value.
    Bytes(&'a [u8]),
    /// The digest of text or bytes longer than [`MAX_KEY_BYTES`] (see [`Key::bounded`]).
    Digest([u8; 16]),
}

/// Text and bytes keys longer than this are kept as their digest ([`Key::Digest`]).
pub const MAX_KEY_BYTES: usize = 64;

/// A key the store keeps. See [`Key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedKey {
    /// See [`Key::Global`].
    Global,
    /// See [`Key::Int`].
    Int(u64),
    /// See [`Key::Ip`].
    Ip(IpAddr),
    /// See [`Key::Text`].
    Text(Box<str>),
    /// See [`Key::Bytes`].
    Bytes(Box<[u8]>),
    /// See [`Key::Digest`].
    Digest([u8; 16]),
}

impl<'a> Key<'a> {
    /// A client address with IPv6 grouped by its first `v6_prefix` bits (clients usually hold a
    /// whole /64, so counting single IPv6 addresses is easy to dodge). IPv4 and IPv4-mapped IPv6
    /// addresses are kept whole.
    pub fn ip_grouped(ip: IpAddr, v6_prefix: u8) -> Self {
        Key::Ip(group_ip(ip, v6_prefix))
    }

    /// This key with text or bytes longer than [`MAX_KEY_BYTES`] replaced by their digest: the
    /// form every store keeps. Other keys are returned as they are.
    ///
    /// ```
    /// use tollgate::Key;
    ///
    /// let long = "x".repeat(100_000);
    /// let key = Key::Text(&long).bounded();
    /// assert!(matches!(key, Key::Digest(_)));
    /// assert_eq!(key.to_owned_key(), Key::Text(&long).to_owned_key());
    /// assert_eq!(Key::Text("alice").bounded(), Key::Text("alice"));
    /// ```
    #[inline]
    pub fn bounded(self) -> Self {
        match self {
            Key::Text(s) if s.len() > MAX_KEY_BYTES => Key::Digest(digest(b't', s.as_bytes())),
            Key::Bytes(b) if b.len() > MAX_KEY_BYTES => Key::Digest(digest(b'b', b)),
            other => other,
        }
    }

    /// The owned form (a long key's digest, see [`Key::bounded`]).
    pub fn to_owned_key(&self) -> OwnedKey {
        match self.bounded() {
            Key::Global => OwnedKey::Global,
            Key::Int(n) => OwnedKey::Int(n),
            Key::Ip(ip) => OwnedKey::Ip(ip),
            Key::Text(s) => OwnedKey::Text(s.into()),
            Key::Bytes(b) => OwnedKey::Bytes(b.into()),
            Key::Digest(d) => OwnedKey::Digest(d),
        }
    }

    /// Whether `owned` is this key.
    #[inline]
    pub fn matches(&self, owned: &OwnedKey) -> bool {
        match (*self, owned) {
            (Key::Global, OwnedKey::Global) => true,
            (Key::Int(a), OwnedKey::Int(b)) => a == *b,
            (Key::Ip(a), OwnedKey::Ip(b)) => a == *b,
            (Key::Text(a), OwnedKey::Text(b)) => a == &**b,
            (Key::Bytes(a), OwnedKey::Bytes(b)) => a == &**b,
            (Key::Digest(a), OwnedKey::Digest(b)) => a == *b,
            (Key::Text(_) | Key::Bytes(_) | Key::Digest(_), _) => self.matches_digest(owned),
            _ => false,
        }
    }

    /// [`Key::matches`] of a long key and its digest, in either form.
    #[cold]
    fn matches_digest(&self, owned: &OwnedKey) -> bool {
        match (self.bounded(), owned.as_key().bounded()) {
            (Key::Digest(a), Key::Digest(b)) => a == b,
            _ => false,
        }
    }

    /// Appends an unambiguous byte encoding (a type tag, then the value; text and bytes are
    /// length-prefixed) for stores that address state by bytes, such as Redis. Two different keys
    /// never encode alike, whatever bytes they hold.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Key::Global => out.push(b'g'),
            Key::Int(n) => {
                out.push(b'n');
                out.extend_from_slice(n.to_string().as_bytes());
            }
            Key::Ip(ip) => {
                out.push(b'i');
                out.extend_from_slice(ip.to_string().as_bytes());
            }
            Key::Text(s) if s.len() <= MAX_KEY_BYTES => encode_len_prefixed(b't', s.as_bytes(), out),
            Key::Bytes(b) if b.len() <= MAX_KEY_BYTES => encode_len_prefixed(b'b', b, out),
            Key::Text(_) | Key::Bytes(_) => self.bounded().encode(out),
            Key::Digest(d) => {
                out.push(b'd');
                for byte in d {
                    out.extend_from_slice(&HEX[usize::from(byte)]);
                }
            }
        }
    }
}

/// The two lowercase hex digits of each byte.
static HEX: [[u8; 2]; 256] = {
    let digits = *b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    table
};

/// The first 128 bits of the SHA-256 of `tag` and `bytes` (the tag keeps text and bytes keys of
/// the same content apart, as they are when short). Out of line: long keys are rare.
#[cold]
#[inline(never)]
fn digest(tag: u8, bytes: &[u8]) -> [u8; 16] {
    use sha2::{Digest as _, Sha256};
    let full = Sha256::new().chain_update([tag]).chain_update(bytes).finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn encode_len_prefixed(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

impl OwnedKey {
    /// The borrowed form.
    #[inline]
    pub fn as_key(&self) -> Key<'_> {
        match self {
            OwnedKey::Global => Key::Global,
            OwnedKey::Int(n) => Key::Int(*n),
            OwnedKey::Ip(ip) => Key::Ip(*ip),
            OwnedKey::Text(s) => Key::Text(s),
            OwnedKey::Bytes(b) => Key::Bytes(b),
            OwnedKey::Digest(d) => Key::Digest(*d),
        }
    }
}

// Hashing goes through `Key` so that both forms hash alike by construction.
impl Hash for Key<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match *self {
            Key::Global => state.write_u8(0),
            Key::Int(n) => {
                state.write_u8(1);
                state.write_u64(n);
            }
            // One write: the tag beside the address.
            Key::Ip(IpAddr::V4(ip)) => state.write_u64((2 << 32) | u64::from(ip.to_bits())),
            Key::Ip(IpAddr::V6(ip)) => {
                state.write_u8(3);
                state.write_u128(ip.to_bits());
            }
            Key::Text(s) if s.len() <= MAX_KEY_BYTES => {
                state.write_u8(4);
                state.write(s.as_bytes());
                state.write_u8(0xff);
            }
            Key::Bytes(b) if b.len() <= MAX_KEY_BYTES => {
                state.write_u8(5);
                state.write_usize(b.len());
                state.write(b);
            }
            // A long key hashes as its digest, as it is stored (no recursion: `hash` is inlined
            // into every table lookup).
            Key::Text(s) => hash_digest(&digest(b't', s.as_bytes()), state),
            Key::Bytes(b) => hash_digest(&digest(b'b', b), state),
            Key::Digest(d) => hash_digest(&d, state),
        }
    }
}

#[inline]
fn hash_digest<H: Hasher>(digest: &[u8; 16], state: &mut H) {
    state.write_u8(6);
    state.write_u128(u128::from_le_bytes(*digest));
}

impl Hash for OwnedKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_key().hash(state);
    }
}

impl fmt::Display for Key<'_> {
    /// A readable form for logs (bytes are escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Key::Global => f.write_str("global"),
            Key::Int(n) => write!(f, "{n}"),
            Key::Ip(ip) => write!(f, "{ip}"),
            Key::Text(s) => write!(f, "{}", s.escape_debug()),
            Key::Bytes(b) => write!(f, "{}", b.escape_ascii()),
            Key::Digest(d) => {
                f.write_str("sha256:")?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Display for OwnedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_key().fmt(f)
    }
}

impl From<IpAddr> for OwnedKey {
    fn from(ip: IpAddr) -> Self {
        OwnedKey::Ip(ip)
    }
}

impl From<&str> for OwnedKey {
    fn from(s: &str) -> Self {
        OwnedKey::Text(s.into())
    }
}

impl From<u64> for OwnedKey {
    fn from(n: u64) -> Self {
        OwnedKey::Int(n)
    }
}

impl From<IpAddr> for Key<'_> {
    fn from(ip: IpAddr) -> Self {
        Key::Ip(ip)
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key::Text(s)
    }
}

impl From<u64> for Key<'_> {
    fn from(n: u64) -> Self {
        Key::Int(n)
    }
}

/// Masks an IPv6 address to its first `prefix` bits; IPv4 and IPv4-mapped addresses are
/// returned as IPv4, whole.
pub fn group_ip(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let prefix = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_keys_count_as_one_whatever_form_they_come_in() {
        let long = "v".repeat(MAX_KEY_BYTES + 1);
        let other = format!("{}w", "v".repeat(MAX_KEY_BYTES));
        let digest = Key::Text(&long).bounded();
        assert!(matches!(digest, Key::Digest(_)));
        assert!(Key::Text(&long).matches(&digest.to_owned_key()));
        assert!(digest.matches(&OwnedKey::from(long.as_str())));
        assert!(!Key::Text(&other).matches(&digest.to_owned_key()));
        // Text and bytes of one content stay apart, long or short.
        assert!(!Key::Bytes(long.as_bytes()).matches(&digest.to_owned_key()));
        assert!(!Key::Bytes(b"abc").matches(&Key::Text("abc").to_owned_key()));
        // At the threshold a key is kept as it is.
        let edge = "e".repeat(MAX_KEY_BYTES);
        assert_eq!(Key::Text(&edge).bounded(), Key::Text(&edge));
        // Store addresses (Redis key names) are bounded too.
        let mut name = Vec::new();
        Key::Bytes(&[b'x'; 100_000]).encode(&mut name);
        assert_eq!(name.len(), 33, "a tag and 32 hex digits: {}", String::from_utf8_lossy(&name));
        let mut same = Vec::new();
        Key::Bytes(&[b'x'; 100_000]).bounded().encode(&mut same);
        assert_eq!(name, same);
        assert!(Key::Text(&long).bounded().to_string().starts_with("sha256:"));
    }

    use super::*;
    use std::hash::BuildHasher;

    fn h<T: Hash + ?Sized>(t: &T) -> u64 {
        foldhash::fast::FixedState::with_seed(7).hash_one(t)
    }

    #[test]
    fn borrowed_and_owned_hash_and_match_alike() {
        let keys = [
            Key::Global,
            Key::Int(42),
            Key::Ip("10.0.0.1".parse().unwrap()),
            Key::Ip("::1".parse().unwrap()),
            Key::Text("alice"),
            Key::Bytes(b"\xff\x00weird"),
        ];
        for k in keys {
            let o = k.to_owned_key();
            assert_eq!(h(&k), h(&o));
            assert!(k.matches(&o));
            assert_eq!(o.as_key(), k);
        }
        assert!(!Key::Text("1").matches(&OwnedKey::Int(1)));
    }

    #[test]
    fn encoding_is_unambiguous() {
        let enc = |k: Key<'_>| {
            let mut v = Vec::new();
            k.encode(&mut v);
            v
        };
        assert_ne!(enc(Key::Text("1")), enc(Key::Int(1)));
        assert_ne!(enc(Key::Text("a:b")), enc(Key::Bytes(b"a:b")));
        assert_ne!(enc(Key::Text("ab")), enc(Key::Text("a")));
    }

    #[test]
    fn ipv6_grouping() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(Key::ip_grouped(a, 64), Key::ip_grouped(b, 64));
        assert_ne!(Key::ip_grouped(a, 128), Key::ip_grouped(b, 128));
        assert_eq!(group_ip(a, 0), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(group_ip(mapped, 64), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
