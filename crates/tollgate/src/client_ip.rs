//! The client's address behind trusted reverse proxies.
//!
//! A server sees its peer's address. Behind a load balancer that is the proxy's; the client's is
//! in a forwarding header the proxy added. Those headers are only as trustworthy as whoever wrote
//! them, so [`ClientIpResolver`] reads them only when the peer is a configured trusted proxy, and
//! walks the chain from the right (the hop nearest to us) to the first address that is *not* a
//! trusted proxy: anything further left was written by the client and can be forged.
//!
//! Supported, in the order consulted by default: RFC 7239 `Forwarded` (`for=` parameters, quoted
//! or not, IPv6 in brackets, ports, `unknown` and obfuscated `_ids`), `X-Forwarded-For`, and
//! `X-Real-IP`. Malformed headers never panic; a header that cannot be read is skipped.
//!
//! ```
//! use std::net::IpAddr;
//! use http::HeaderMap;
//! use tollgate::ClientIpResolver;
//!
//! let resolver = ClientIpResolver::new().trust("10.0.0.0/8".parse().unwrap());
//! let mut headers = HeaderMap::new();
//! headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3".parse().unwrap());
//!
//! // From a trusted proxy: the right-most untrusted address.
//! let proxy: IpAddr = "10.0.0.1".parse().unwrap();
//! assert_eq!(resolver.resolve(proxy, &headers), "203.0.113.7".parse::<IpAddr>().unwrap());
//! // From anyone else the header is ignored.
//! let stranger: IpAddr = "198.51.100.9".parse().unwrap();
//! assert_eq!(resolver.resolve(stranger, &headers), stranger);
//! ```

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A forwarding header the resolver may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardingHeader {
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
    /// `X-Forwarded-For`: a comma-separated list, client first.
    XForwardedFor,
    /// `X-Real-IP`: one address, set by the nearest proxy.
    XRealIp,
}

/// Finds the client's address from the peer address and the forwarding headers, trusting the
/// headers only from configured proxies. Cheap to clone.
///
/// With no trusted proxy (the default) the peer address is always the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    headers: Vec<ForwardingHeader>,
}

impl Default for ClientIpResolver {
    fn default() -> Self {
        Self::new()
    }
}

/// One hop of a forwarding chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or text that is not an address: the chain cannot be
    /// followed past it.
    Opaque,
}

impl ClientIpResolver {
    /// A resolver that trusts no proxy and reads, once proxies are trusted, `Forwarded`, then
    /// `X-Forwarded-For`, then `X-Real-IP`.
    pub fn new() -> Self {
        Self {
            trusted: Vec::new(),
            headers: vec![ForwardingHeader::Forwarded, ForwardingHeader::XForwardedFor, ForwardingHeader::XRealIp],
        }
    }

    /// Trusts the proxies in `net` (e.g. `10.0.0.0/8`, `::1/128`).
    #[must_use]
    pub fn trust(mut self, net: IpNet) -> Self {
        self.trusted.push(net.trunc());
        self
    }

    /// Trusts every network of `nets`.
    #[must_use]
    pub fn trust_all(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(nets.into_iter().map(|n| n.trunc()));
        self
    }

    /// Which headers to read and in which order (the first one present and readable wins).
    #[must_use]
    pub fn headers(mut self, headers: impl IntoIterator<Item = ForwardingHeader>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// The trusted networks.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether `ip` is a trusted proxy (IPv4-mapped IPv6 addresses count as their IPv4 address).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address.
    ///
    /// When `peer` is not trusted it is the answer and no header is read. Otherwise the first
    /// configured header that is present and readable gives the chain of hops; walking it from
    /// the right, the first address that is not a trusted proxy is the client. When every hop is
    /// trusted, the left-most one is. When the walk meets a hop that is not an address (`unknown`,
    /// an obfuscated id), the client cannot be told apart from the proxy that reported it, so
    /// the last trusted address walked is the answer. Never panics.
    #[inline]
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() {
            return peer;
        }
        self.resolve_trusted(peer, headers)
    }

    /// [`ClientIpResolver::resolve`] with trusted proxies configured.
    fn resolve_trusted(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        for header in &self.headers {
            if let Some(ip) = self.read_header(*header, peer, headers) {
                return ip;
            }
        }
        peer
    }

    fn read_header(&self, header: ForwardingHeader, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        match header {
            ForwardingHeader::XRealIp => {
                // Only the nearest proxy writes it; a repeated header is ambiguous and ignored.
                let mut values = headers.get_all(&X_REAL_IP).iter();
                let value = values.next()?;
                if values.next().is_some() {
                    return None;
                }
                match parse_node(value.to_str().ok()?.trim()) {
                    Hop::Addr(ip) => Some(ip),
                    Hop::Opaque => None,
                }
            }
            ForwardingHeader::XForwardedFor => {
                let mut hops = Vec::new();
                for value in headers.get_all(&X_FORWARDED_FOR) {
                    for item in value.to_str().ok()?.split(',') {
                        let item = item.trim();
                        if !item.is_empty() {
                            hops.push(parse_node(item));
                        }
                    }
                }
                self.walk(peer, &hops)
            }
            ForwardingHeader::Forwarded => {
                let mut hops = Vec::new();
                for value in headers.get_all(FORWARDED) {
                    parse_forwarded(value.to_str().ok()?, &mut hops)?;
                }
                self.walk(peer, &hops)
            }
        }
    }

    /// Walks `hops` from the right; `None` when there are none.
    fn walk(&self, peer: IpAddr, hops: &[Hop]) -> Option<IpAddr> {
        let mut last_trusted = peer;
        for hop in hops.iter().rev() {
            match *hop {
                Hop::Addr(ip) if self.is_trusted(ip) => last_trusted = ip,
                Hop::Addr(ip) => return Some(ip),
                Hop::Opaque => return Some(last_trusted),
            }
        }
        (!hops.is_empty()).then_some(last_trusted)
    }
}

/// One node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_node(text: &str) -> Hop {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Hop::Addr(ip.to_canonical());
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Hop::Addr(sa.ip().to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, the port possibly obfuscated (`_x`, allowed by RFC 7239).
        let inner = rest.strip_suffix(']').or_else(|| rest.split_once("]:").map(|(inner, _port)| inner));
        if let Some(Ok(ip)) = inner.map(str::parse::<IpAddr>) {
            return Hop::Addr(ip.to_canonical());
        }
        return Hop::Opaque;
    }
    // `1.2.3.4:_port`
    if let Some(Ok(ip)) = text.rsplit_once(':').map(|(host, _port)| host.parse::<std::net::Ipv4Addr>()) {
        return Hop::Addr(IpAddr::V4(ip));
    }
    Hop::Opaque
}

/// Parses one `Forwarded` field value (a comma-separated list of elements, each a
/// semicolon-separated list of `name=value` pairs, values tokens or quoted strings), pushing one
/// hop per element. `None` when the text is not a valid field value.
fn parse_forwarded(text: &str, hops: &mut Vec<Hop>) -> Option<()> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut element_for: Option<Hop> = None;
    let mut element_empty = true;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            break;
        }
        match bytes[i] {
            b',' => {
                if !element_empty {
                    hops.push(element_for.take().unwrap_or(Hop::Opaque));
                }
                element_for = None;
                element_empty = true;
                i += 1;
                continue;
            }
            b';' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        // name
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b';' && bytes[i] != b',' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            return None;
        }
        let name = text.get(start..i)?.trim();
        i += 1;
        skip_ws(&mut i);
        // value
        let value: std::borrow::Cow<'_, str> = if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut out = String::new();
            let mut closed = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if i + 1 < bytes.len() => {
                        out.push(char::from(bytes[i + 1]));
                        i += 2;
                    }
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    b => {
                        out.push(char::from(b));
                        i += 1;
                    }
                }
            }
            if !closed {
                return None;
            }
            out.into()
        } else {
            let start = i;
            while i < bytes.len() && bytes[i] != b';' && bytes[i] != b',' {
                i += 1;
            }
            text.get(start..i)?.trim().into()
        };
        element_empty = false;
        if name.eq_ignore_ascii_case("for") {
            if element_for.is_some() {
                // Two `for` in one element: ambiguous.
                return None;
            }
            element_for = Some(parse_node(value.trim()));
        }
    }
    if !element_empty {
        hops.push(element_for.unwrap_or(Hop::Opaque));
    }
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn resolver() -> ClientIpResolver {
        ClientIpResolver::new().trust("10.0.0.0/8".parse().unwrap()).trust("2001:db8:ffff::/48".parse().unwrap())
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1"), ("x-real-ip", "1.1.1.1")]);
        assert_eq!(resolver().resolve(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        assert_eq!(ClientIpResolver::new().resolve(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_right_most_untrusted() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9, 1.2.3.4"), ("x-forwarded-for", "10.0.0.7")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &all_trusted), ip("10.9.9.9"));
        let with_ports = headers(&[("x-forwarded-for", "[2001:db8::1]:443, 1.2.3.4:5678")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &with_ports), ip("1.2.3.4"));
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, hello")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &garbage), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_rfc7239_forms() {
        let r = resolver();
        let peer = ip("10.0.0.1");
        let h = headers(&[("forwarded", r#"for=192.0.2.60;proto=http;by=203.0.113.43"#)]);
        assert_eq!(r.resolve(peer, &h), ip("192.0.2.60"));
        let h = headers(&[("forwarded", r#"For="[2001:db8:cafe::17]:4711""#)]);
        assert_eq!(r.resolve(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", r#"for=192.0.2.43, for="[2001:db8:ffff::1]""#)]);
        assert_eq!(r.resolve(peer, &h), ip("192.0.2.43"));
        let h = headers(&[("forwarded", r#"for=192.0.2.43, for=_hidden, for=10.1.1.1"#)]);
        assert_eq!(r.resolve(peer, &h), ip("10.1.1.1"));
        let h = headers(&[("forwarded", r#"for=unknown"#)]);
        assert_eq!(r.resolve(peer, &h), peer);
        let h = headers(&[("forwarded", r#"for="1.2.3.4:_port""#)]);
        assert_eq!(r.resolve(peer, &h), ip("1.2.3.4"));
        // Invalid Forwarded: falls through to X-Forwarded-For.
        let h = headers(&[("forwarded", r#"for="unterminated"#), ("x-forwarded-for", "5.5.5.5")]);
        assert_eq!(r.resolve(peer, &h), ip("5.5.5.5"));
    }

    #[test]
    fn x_real_ip_and_order() {
        let r = resolver();
        let peer = ip("10.0.0.1");
        assert_eq!(r.resolve(peer, &headers(&[("x-real-ip", " 7.7.7.7 ")])), ip("7.7.7.7"));
        let both = headers(&[("x-real-ip", "7.7.7.7"), ("x-forwarded-for", "8.8.8.8")]);
        assert_eq!(r.resolve(peer, &both), ip("8.8.8.8"));
        let r = r.headers([ForwardingHeader::XRealIp]);
        assert_eq!(r.resolve(peer, &both), ip("7.7.7.7"));
        let twice = headers(&[("x-real-ip", "7.7.7.7"), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(r.resolve(peer, &twice), peer);
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let r = resolver();
        let h = headers(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(r.resolve(ip("::ffff:10.0.0.1"), &h), ip("1.2.3.4"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_headers(
            xff in proptest::collection::vec(any::<u8>(), 0..80),
            fwd in "[ -~]{0,80}",
            fwd_bytes in proptest::collection::vec(any::<u8>(), 0..40),
            real in "[ -~]{0,40}",
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&xff) { h.append(&X_FORWARDED_FOR, v); }
            if let Ok(v) = http::HeaderValue::from_str(&fwd) { h.append(FORWARDED, v); }
            if let Ok(v) = http::HeaderValue::from_bytes(&fwd_bytes) { h.append(FORWARDED, v); }
            if let Ok(v) = http::HeaderValue::from_str(&real) { h.append(&X_REAL_IP, v); }
            let r = ClientIpResolver::new().trust("0.0.0.0/0".parse().unwrap());
            let _ = r.resolve(ip("10.0.0.1"), &h);
            let r = resolver();
            let _ = r.resolve(ip("10.0.0.1"), &h);
            prop_assert_eq!(r.resolve(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        }

        #[test]
        fn forged_left_entries_never_win(forged in any::<[u8; 4]>(), real in any::<[u8; 4]>()) {
            let real = IpAddr::from(real);
            prop_assume!(!resolver().is_trusted(real));
            let h = headers(&[("x-forwarded-for", &format!("{}, {real}", IpAddr::from(forged)))]);
            prop_assert_eq!(resolver().resolve(ip("10.0.0.1"), &h), real);
        }
    }
}
