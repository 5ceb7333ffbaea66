//! The client's address behind trusted reverse proxies.
//!
//! A server sees its peer's address. Behind a load balancer that is the proxy's; the client's is
//! in a forwarding header the proxy added. Those headers are only as trustworthy as whoever wrote
//! them, so [`ClientIpResolver`] reads them only when the peer is a configured trusted proxy, and
//! walks the chain from the right (the hop nearest to us) to the first address that is *not* a
//! trusted proxy: anything further left was written by the client and can be forged.
//!
//! Supported: `X-Forwarded-For` (read by default), RFC 7239 `Forwarded` (`for=` parameters,
//! quoted or not, IPv6 in brackets, ports, `unknown` and obfuscated `_ids`) and `X-Real-IP`.
//! Name the ones your proxies write with [`ClientIpResolver::headers`]: a proxy passes on the
//! headers it does not write as the client sent them, so reading one of those would let a client
//! choose its own address. Malformed headers never panic: a hop that cannot be read ends the walk
//! as `unknown` does, and a header that is present decides even when nothing in it can be read.
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

use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

use crate::request::RequestHeaders;

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
    #[serde(alias = "x-forwarded-for")]
    XForwardedFor,
    /// `X-Real-IP`: one address, set by the nearest proxy.
    #[serde(alias = "x-real-ip")]
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
    /// A resolver that trusts no proxy and reads, once proxies are trusted, `X-Forwarded-For`.
    pub fn new() -> Self {
        Self { trusted: Vec::new(), headers: vec![ForwardingHeader::XForwardedFor] }
    }

    /// Trusts the proxies in `net` (e.g. `10.0.0.0/8`, `::1/128`; an IPv4-mapped IPv6 network
    /// such as `::ffff:10.0.0.0/104` is its IPv4 network).
    #[must_use]
    pub fn trust(mut self, net: IpNet) -> Self {
        self.trusted.push(canonical_net(net));
        self
    }

    /// Trusts every network of `nets`.
    #[must_use]
    pub fn trust_all(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(nets.into_iter().map(canonical_net));
        self
    }

    /// Which headers to read, in order: the first one present in a request from a trusted proxy
    /// decides. Name only headers your proxies write (replacing or appending to what the client
    /// sent); the default is `X-Forwarded-For` alone.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tollgate::{ClientIpResolver, ForwardingHeader};
    ///
    /// // Behind a proxy that writes RFC 7239 `Forwarded` and nothing else:
    /// let resolver = ClientIpResolver::new()
    ///     .trust("10.0.0.0/8".parse().unwrap())
    ///     .headers([ForwardingHeader::Forwarded]);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("forwarded", r#"for="[2001:db8::17]:4711""#.parse().unwrap());
    /// headers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap()); // the client's, passed on
    /// let proxy: IpAddr = "10.0.0.1".parse().unwrap();
    /// assert_eq!(resolver.resolve(proxy, &headers), "2001:db8::17".parse::<IpAddr>().unwrap());
    /// ```
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
    /// configured header that is present gives the chain of hops; walking it from the right, the
    /// first address that is not a trusted proxy is the client. When every hop is trusted, the
    /// left-most one is. When the walk meets a hop that is not an address (`unknown`, an
    /// obfuscated id, text that cannot be read), the client cannot be told apart from the proxy
    /// that reported it, so the last trusted address walked (at first `peer`) is the answer.
    /// Never panics.
    #[inline]
    pub fn resolve<H: RequestHeaders + ?Sized>(&self, peer: IpAddr, headers: &H) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() {
            return peer;
        }
        self.resolve_trusted(peer, headers)
    }

    /// [`ClientIpResolver::resolve`] with trusted proxies configured.
    fn resolve_trusted<H: RequestHeaders + ?Sized>(&self, peer: IpAddr, headers: &H) -> IpAddr {
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

    /// The address `header` gives; `None` when the request does not carry it.
    fn read_header<H: RequestHeaders + ?Sized>(
        &self,
        header: ForwardingHeader,
        peer: IpAddr,
        headers: &H,
    ) -> Option<IpAddr> {
        match header {
            ForwardingHeader::XRealIp => {
                // Only the nearest proxy writes it; a repeated header is ambiguous.
                let (mut count, mut hop) = (0, Hop::Opaque);
                headers.each(&X_REAL_IP, &mut |value| {
                    count += 1;
                    hop = parse_node_bytes(value);
                });
                match (count, hop) {
                    (0, _) => None,
                    (1, Hop::Addr(ip)) => Some(ip),
                    _ => Some(peer),
                }
            }
            ForwardingHeader::XForwardedFor => {
                headers.first(&X_FORWARDED_FOR)?;
                let mut hops = Vec::new();
                headers.each(&X_FORWARDED_FOR, &mut |value| {
                    let items = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
                    hops.extend(items.filter(|item| !item.is_empty()).map(parse_node_bytes));
                });
                Some(self.walk(peer, &hops))
            }
            ForwardingHeader::Forwarded => {
                headers.first(&FORWARDED)?;
                let mut hops = Vec::new();
                headers.each(&FORWARDED, &mut |value| parse_forwarded(value, &mut hops));
                Some(self.walk(peer, &hops))
            }
        }
    }

    /// Walks `hops` from the right (`peer` when there are none).
    fn walk(&self, peer: IpAddr, hops: &[Hop]) -> IpAddr {
        let mut last_trusted = peer;
        for hop in hops.iter().rev() {
            match *hop {
                Hop::Addr(ip) if self.is_trusted(ip) => last_trusted = ip,
                Hop::Addr(ip) => return ip,
                Hop::Opaque => return last_trusted,
            }
        }
        last_trusted
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`) as its IPv4 network (`a.b.c.d/n`), as
/// addresses are compared in their canonical form; any other network truncated to its prefix.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped.trunc());
    }
    net.trunc()
}

/// [`parse_node`] of bytes that may not be text: such a node is opaque.
fn parse_node_bytes(bytes: &[u8]) -> Hop {
    match std::str::from_utf8(bytes.trim_ascii()) {
        Ok(text) => parse_node(text),
        Err(_) => Hop::Opaque,
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

/// Parses one `Forwarded` field value — a comma-separated list of elements, each a
/// semicolon-separated list of `name=value` pairs, values tokens or quoted strings — pushing one
/// hop per element: its `for` node, or opaque for an element without one or that cannot be read
/// (two `for`, a pair without `=`, a quote that is not a whole quoted value, bytes that are not
/// text). A bad element spoils no other: the hops to its right, which nearer proxies wrote, still
/// count — also when a proxy appended them to the client's line after an unterminated quote.
fn parse_forwarded(value: &[u8], hops: &mut Vec<Hop>) {
    for element in split_outside_quotes(value, b',') {
        if !element.trim_ascii().is_empty() {
            hops.push(parse_element(element).unwrap_or(Hop::Opaque));
        }
    }
}

/// One `Forwarded` element's `for` node; `None` when the element cannot be read or has none.
fn parse_element(element: &[u8]) -> Option<Hop> {
    let mut found = None;
    for pair in split_outside_quotes(element, b';').map(<[u8]>::trim_ascii) {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        let name = name.trim_ascii();
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        // Every pair is checked, not only `for`: a quote out of place (in a name, inside a token,
        // an unterminated quoted string) shifts where the quoted strings after it seem to start
        // and end, so a client could make the element a proxy appended to its line part of a
        // pair of its own, and its own `for` the last hop.
        if !is_token(name) {
            return None;
        }
        let node = match value.strip_prefix(b"\"") {
            Some(quoted) => unquote(quoted)?,
            None if value.contains(&b'"') => return None,
            None => value.to_vec(),
        };
        if !name.eq_ignore_ascii_case(b"for") {
            continue;
        }
        if found.is_some() {
            // Two `for` in one element: ambiguous.
            return None;
        }
        found = Some(parse_node_bytes(&node));
    }
    found
}

/// Whether `name` is an RFC 9110 token (a `Forwarded` parameter name).
fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The content of a quoted string whose opening quote is already gone; `None` unless its closing
/// quote ends `rest`.
fn unquote(rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => return bytes.as_slice().is_empty().then_some(out),
            b => out.push(b),
        }
    }
    None
}

/// `text` split at each `sep` outside quoted strings (inside them a backslash escapes the next
/// byte). An unterminated quote ends at the first `sep` after it (the part up to there keeps the
/// broken quote, so it cannot be read), or else runs to the end: what a proxy appended after a
/// client's unterminated quote is still split off.
fn split_outside_quotes(text: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        // The first `sep` inside the quoted string open now.
        let mut sep_in_quote = None;
        for (i, &b) in text.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
                sep_in_quote = None;
            } else if b == sep && !quoted {
                rest = text.get(i + 1..);
                return text.get(..i);
            }
            if quoted && b == sep && sep_in_quote.is_none() {
                sep_in_quote = Some(i);
            }
        }
        if quoted && let Some(i) = sep_in_quote {
            rest = text.get(i + 1..);
            return text.get(..i);
        }
        rest = None;
        Some(text)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::HeaderMap;
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
        let r = resolver().headers([ForwardingHeader::Forwarded]);
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
        let h = headers(&[("forwarded", r#"by=1.1.1.1;for="a\"b,c";proto=https, for=192.0.2.9"#)]);
        assert_eq!(r.resolve(peer, &h), ip("192.0.2.9"), "a comma inside quotes splits nothing");
        // A present header decides, even when it cannot be read: the next one is not consulted.
        let r = r.headers([ForwardingHeader::Forwarded, ForwardingHeader::XForwardedFor]);
        let h = headers(&[("forwarded", r#"for="unterminated"#), ("x-forwarded-for", "5.5.5.5")]);
        assert_eq!(r.resolve(peer, &h), peer);
    }

    #[test]
    fn only_the_configured_headers_are_read() {
        // A proxy that appends X-Forwarded-For passes on a client's own `Forwarded`.
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        let only_client_headers = headers(&[("forwarded", "for=6.6.6.6"), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(resolver().resolve(ip("10.0.0.1"), &only_client_headers), ip("10.0.0.1"));
    }

    #[test]
    fn a_hop_that_cannot_be_read_spoils_only_itself() {
        let peer = ip("10.0.0.1");
        let r = resolver().headers([ForwardingHeader::XForwardedFor, ForwardingHeader::XRealIp]);
        let mut h = headers(&[("x-real-ip", "6.6.6.6")]);
        h.append(&X_FORWARDED_FOR, http::HeaderValue::from_bytes(b"\x80, 203.0.113.7").unwrap());
        assert_eq!(r.resolve(peer, &h), ip("203.0.113.7"));
        let mut h = headers(&[("x-real-ip", "6.6.6.6")]);
        h.append(&X_FORWARDED_FOR, http::HeaderValue::from_bytes(b"203.0.113.7, \x80, 10.0.0.9").unwrap());
        assert_eq!(r.resolve(peer, &h), ip("10.0.0.9"), "the walk stops at the unreadable hop");
        let h = headers(&[("x-forwarded-for", ","), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(r.resolve(peer, &h), peer, "a present header decides, even an empty one");

        let r = resolver().headers([ForwardingHeader::Forwarded, ForwardingHeader::XForwardedFor]);
        for client_line in ["for=1.1.1.1;for=2.2.2.2", "for", "for=\"1.1.1.1", "proto=http"] {
            let mut h = headers(&[("forwarded", client_line), ("forwarded", "for=203.0.113.7")]);
            h.append(&X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
            assert_eq!(r.resolve(peer, &h), ip("203.0.113.7"), "{client_line}");
        }
        let mut h = HeaderMap::new();
        h.append(FORWARDED, http::HeaderValue::from_bytes(b"for=\xff, for=203.0.113.7").unwrap());
        assert_eq!(r.resolve(peer, &h), ip("203.0.113.7"));
    }

    #[test]
    fn a_client_quote_cannot_swallow_the_element_a_proxy_appends_to_its_line() {
        // A proxy that appends its element to the client's own `Forwarded` line (`<the client's
        // value>, for=...`): an unterminated or misplaced quote in the client's part must not take the
        // proxy's element into the client's, nor make the client's `for` the right-most hop.
        let r = resolver().headers([ForwardingHeader::Forwarded]);
        let peer = ip("10.0.0.1");
        for (client, proxy, real) in [
            (r#"for=6.6.6.6;by=""#, "for=203.0.113.7", "203.0.113.7"),
            (r#"for=6.6.6.6;by=""#, r#"for="[2001:db8::9]:4711""#, "2001:db8::9"),
            (r#"for=6.6.6.6;by=a""#, r#"for="[2001:db8::9]:4711""#, "2001:db8::9"),
            (r#"for=6.6.6.6;""#, r#"for="[2001:db8::9]:4711""#, "2001:db8::9"),
            (r#"for=6.6.6.6;by="\"#, "for=203.0.113.7;proto=https", "203.0.113.7"),
            (r#"for="1.1.1.1"#, "for=203.0.113.7", "203.0.113.7"),
        ] {
            let h = headers(&[("forwarded", &format!("{client}, {proxy}"))]);
            let got = r.resolve(peer, &h);
            assert_ne!(got, ip("6.6.6.6"), "spoofed by {client:?} before {proxy:?}");
            assert!(got == ip(real) || got == peer, "{client:?}, {proxy:?}: {got}");
        }
        // Where the proxy's element has no quote of its own, it is read whole.
        for client in [r#"for=6.6.6.6;by=""#, r#"for="1.1.1.1"#, r#"for=6.6.6.6;by="\"#, r#"by=""#] {
            let h = headers(&[("forwarded", &format!("{client}, for=203.0.113.7"))]);
            assert_eq!(r.resolve(peer, &h), ip("203.0.113.7"), "{client:?}");
        }
    }

    #[test]
    fn ipv4_mapped_trusted_networks_are_their_ipv4_networks() {
        let r = ClientIpResolver::new().trust("::ffff:10.0.0.0/104".parse().unwrap());
        assert_eq!(r.trusted(), ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert!(r.is_trusted(ip("10.1.2.3")) && r.is_trusted(ip("::ffff:10.1.2.3")));
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn x_real_ip_and_order() {
        let r = resolver().headers([ForwardingHeader::XForwardedFor, ForwardingHeader::XRealIp]);
        let peer = ip("10.0.0.1");
        assert_eq!(r.resolve(peer, &headers(&[("x-real-ip", " 7.7.7.7 ")])), ip("7.7.7.7"));
        let both = headers(&[("x-real-ip", "7.7.7.7"), ("x-forwarded-for", "8.8.8.8")]);
        assert_eq!(r.resolve(peer, &both), ip("8.8.8.8"));
        let r = r.headers([ForwardingHeader::XRealIp]);
        assert_eq!(r.resolve(peer, &both), ip("7.7.7.7"));
        let twice = headers(&[("x-real-ip", "7.7.7.7"), ("x-real-ip", "6.6.6.6")]);
        assert_eq!(r.resolve(peer, &twice), peer);
        assert_eq!(r.resolve(peer, &headers(&[("x-real-ip", "nobody")])), peer);
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
        fn a_client_prefix_on_the_proxys_line_never_wins(
            own in "(for=6\\.6\\.6\\.6;)?",
            client in "[\"\\\\,;= a-z0-9.:\\[\\]_]{0,30}",
            v6 in any::<bool>(),
        ) {
            let r = resolver().headers([ForwardingHeader::Forwarded]);
            let peer = ip("10.0.0.1");
            let (proxy, real) = if v6 {
                (r#"for="[2001:db8::9]:4711""#, ip("2001:db8::9"))
            } else {
                ("for=203.0.113.7;proto=https", ip("203.0.113.7"))
            };
            let h = headers(&[("forwarded", &format!("{own}{client}, {proxy}"))]);
            let got = r.resolve(peer, &h);
            prop_assert!(got == real || got == peer, "{own}{client}, {proxy}: {got}");
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
