//! Redis key names.
//!
//! A check's keys are `<prefix>:{<tag>}:<kind>:<limit>:<key>`:
//!
//! - `<tag>` is the FNV-1a 64 digest of the client key's encoding ([`Key::encode`]), in hex. It is
//!   the Redis Cluster hash tag, so every limit of one client key (all the limits of a policy
//!   counted by the same key) lands in one slot and is checked by one script. Hex cannot contain
//!   `}`, and the prefix may not contain `{` or `}`, so no key bytes can move the tag.
//! - `<kind>` is `s` (state) or `b` (penalty block); `l` (a lease set) is used by leases.
//! - `<limit>` is `<len>:<policy><len>:<name>:<algorithm>`, length-prefixed so that any names are
//!   unambiguous, and naming the algorithm so a limit whose algorithm changes starts afresh.
//! - `<key>` is the client key's encoding, which is unambiguous and comes last, so arbitrary
//!   bytes (`}`, `{`, `:`, newlines, invalid UTF-8) stay inside their own key.
//!
//! Digests may collide; that only puts two client keys in one slot, never shares their state.

use std::fmt::Write as _;

use tollgate::{Key, LimitSpec};

/// FNV-1a, 64 bits: stable across processes, versions and platforms (unlike `std`'s hashers), so
/// every instance computes the same slot.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The `<limit>` segment of a limit's keys.
pub(crate) fn limit_segment(spec: &LimitSpec) -> Box<[u8]> {
    let mut s = String::new();
    let _ =
        write!(s, "{}:{}{}:{}:{}", spec.policy.len(), spec.policy, spec.name.len(), spec.name, spec.algorithm.name());
    s.into_bytes().into_boxed_slice()
}

/// The keys of one check.
#[derive(Debug)]
pub(crate) struct CheckKeys {
    pub(crate) tag: u64,
    pub(crate) state: Vec<u8>,
    pub(crate) block: Vec<u8>,
}

/// Builds the state and block keys of `key` under `limit`.
pub(crate) fn check_keys(prefix: &str, limit: &[u8], key: Key<'_>) -> CheckKeys {
    let mut encoded = Vec::with_capacity(24);
    key.encode(&mut encoded);
    let tag = fnv1a64(&encoded);
    let state = name(prefix, tag, b's', limit, &encoded);
    let block = name(prefix, tag, b'b', limit, &encoded);
    CheckKeys { tag, state, block }
}

/// `<prefix>:{<tag>}:<kind>:<segment>:<rest>`.
pub(crate) fn name(prefix: &str, tag: u64, kind: u8, segment: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 24 + segment.len() + rest.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b":{");
    out.extend_from_slice(format!("{tag:016x}").as_bytes());
    out.extend_from_slice(b"}:");
    out.push(kind);
    out.push(b':');
    out.extend_from_slice(segment);
    out.push(b':');
    out.extend_from_slice(rest);
    out
}

/// Whether `prefix` is usable: it must not contain `{` or `}` (the hash tag would move).
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.contains(['{', '}'])
}

/// The hash tag Redis Cluster hashes for `key`: between the first `{` and the next `}`, when
/// that is not empty; else the whole key.
#[cfg(test)]
pub(crate) fn redis_hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tollgate::Algorithm;

    fn spec(policy: &str, name: &str) -> LimitSpec {
        LimitSpec { name: name.into(), policy: policy.into(), algorithm: Algorithm::Gcra }
    }

    #[test]
    fn hostile_bytes_cannot_move_the_tag_or_leave_the_namespace() {
        let limit = limit_segment(&spec("p", "n"));
        let hostile: [Key<'_>; 5] =
            [Key::Text("}{x}"), Key::Bytes(b"{\xff}\n:"), Key::Text("a\r\nb"), Key::Text(""), Key::Bytes(b"}}}}")];
        for k in hostile {
            let keys = check_keys("app", &limit, k);
            assert!(keys.state.starts_with(b"app:{"));
            let mut enc = Vec::new();
            k.encode(&mut enc);
            assert_eq!(redis_hash_tag(&keys.state), format!("{:016x}", fnv1a64(&enc)).as_bytes());
            assert_eq!(redis_hash_tag(&keys.block), redis_hash_tag(&keys.state));
            assert!(keys.state.ends_with(&enc));
        }
    }

    #[test]
    fn names_are_unambiguous() {
        // Without length prefixes these two would both read `a:b:c`.
        assert_ne!(limit_segment(&spec("a:b", "c")), limit_segment(&spec("a", "b:c")));
        let l = limit_segment(&spec("p", "n"));
        assert_ne!(check_keys("x", &l, Key::Text("1")).state, check_keys("x", &l, Key::Int(1)).state);
    }

    #[test]
    fn limits_of_one_client_key_share_a_slot() {
        let a = check_keys("x", &limit_segment(&spec("p", "per_ip")), Key::Text("k"));
        let b = check_keys("x", &limit_segment(&spec("q", "burst")), Key::Text("k"));
        assert_eq!(a.tag, b.tag);
        assert!(valid_prefix("tollgate:prod"));
        assert!(!valid_prefix("a{b"));
    }
}
