//! Keys: what a limit counts by.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};

/// A key to count by, borrowed: checking a key never allocates. The store keeps an [`OwnedKey`]
/// the first time it sees one.
///
/// `Key` and [`OwnedKey`] hash and compare alike, so a `Key` finds the state stored under the
/// equal `OwnedKey`.
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
}

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
}

impl<'a> Key<'a> {
    /// A client address with IPv6 grouped by its first `v6_prefix` bits (clients usually hold a
    /// whole /64, so counting single IPv6 addresses is easy to dodge). IPv4 and IPv4-mapped IPv6
    /// addresses are kept whole.
    pub fn ip_grouped(ip: IpAddr, v6_prefix: u8) -> Self {
        Key::Ip(group_ip(ip, v6_prefix))
    }

    /// The owned form.
    pub fn to_owned_key(&self) -> OwnedKey {
        match *self {
            Key::Global => OwnedKey::Global,
            Key::Int(n) => OwnedKey::Int(n),
            Key::Ip(ip) => OwnedKey::Ip(ip),
            Key::Text(s) => OwnedKey::Text(s.into()),
            Key::Bytes(b) => OwnedKey::Bytes(b.into()),
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
            Key::Text(s) => encode_len_prefixed(b't', s.as_bytes(), out),
            Key::Bytes(b) => encode_len_prefixed(b'b', b, out),
        }
    }
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
            Key::Text(s) => {
                state.write_u8(4);
                state.write(s.as_bytes());
                state.write_u8(0xff);
            }
            Key::Bytes(b) => {
                state.write_u8(5);
                state.write_usize(b.len());
                state.write(b);
            }
        }
    }
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
