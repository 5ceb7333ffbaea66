//! Who may see the stats: they name the clients being refused, so they are no page for the world.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, FORWARDED, HeaderName};

use crate::request::RequestHeaders;

/// Headers a proxy adds: a request carrying one came through a proxy, so its loopback peer
/// address says nothing of where the client is.
const PROXY_HEADERS: [HeaderName; 3] =
    [FORWARDED, HeaderName::from_static("x-forwarded-for"), HeaderName::from_static("x-real-ip")];

/// Who may see the stats endpoints (`/stats`, its event stream and the dashboard): a client
/// connected from a loopback address (the operator on the machine) that came through no proxy,
/// and, when a token is configured, anyone presenting it as `Authorization: Bearer <token>` or
/// as the query parameter `token=<token>` (for a browser's page and its event stream, which
/// cannot set headers; it then shows in access logs, so prefer the header where you can).
///
/// Without a token, a request through a proxy on the same machine (one with `Forwarded`,
/// `X-Forwarded-For` or `X-Real-IP`) is refused even though its peer is loopback: a proxy
/// would otherwise open the stats to everyone it serves.
///
/// ```
/// use tollgate::stats::StatsAccess;
///
/// let headers = http::HeaderMap::new();
/// let open = StatsAccess::loopback();
/// assert!(open.permits(Some("127.0.0.1".parse()?), &headers, None));
/// assert!(!open.permits(Some("203.0.113.9".parse()?), &headers, None));
///
/// let with_token = StatsAccess::loopback().token("s3cret");
/// assert!(with_token.permits(Some("203.0.113.9".parse()?), &headers, Some("token=s3cret")));
/// let mut bearer = http::HeaderMap::new();
/// bearer.insert("authorization", "Bearer s3cret".parse()?);
/// assert!(with_token.permits(Some("203.0.113.9".parse()?), &bearer, None));
/// assert!(!with_token.permits(Some("203.0.113.9".parse()?), &headers, Some("token=guess")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct StatsAccess {
    token: Option<Arc<str>>,
}

impl fmt::Debug for StatsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: say whether there is one, not what it is.
        f.debug_struct("StatsAccess").field("token", &self.token.as_ref().map(|_| "<set>")).finish()
    }
}

impl StatsAccess {
    /// Loopback clients only (the default).
    pub fn loopback() -> Self {
        Self::default()
    }

    /// Also anyone presenting `token`; an empty token is none (so that an empty variable
    /// opens nothing).
    #[must_use]
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref().trim();
        self.token = (!token.is_empty()).then(|| token.into());
        self
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether the request from `peer` (the connection's address, not one read from headers)
    /// with `headers` and the URI's `query` may see the stats.
    pub fn permits(&self, peer: Option<IpAddr>, headers: &dyn RequestHeaders, query: Option<&str>) -> bool {
        let local = peer.is_some_and(|ip| ip.to_canonical().is_loopback())
            && PROXY_HEADERS.iter().all(|name| headers.first(name).is_none());
        local || self.token.as_deref().is_some_and(|token| presented(token, headers, query))
    }

    /// The body of the answer to a request that may not see the stats (with status 403).
    pub fn refusal_body(&self) -> &'static str {
        if self.token.is_some() {
            r#"{"error":"forbidden","detail":"stats are served to loopback clients and to holders of the stats token"}"#
        } else {
            r#"{"error":"forbidden","detail":"stats are served to loopback clients only (no stats token is configured)"}"#
        }
    }
}

/// Whether `token` is in `headers` as a bearer token or in `query` as `token=`.
fn presented(token: &str, headers: &dyn RequestHeaders, query: Option<&str>) -> bool {
    let bearer = headers
        .first(&AUTHORIZATION)
        .and_then(|v| v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")))
        .is_some_and(|v| same(v.trim_ascii(), token.as_bytes()));
    bearer
        || query.is_some_and(|q| {
            q.split('&').filter_map(|pair| pair.strip_prefix("token=")).any(|v| same(v.as_bytes(), token.as_bytes()))
        })
}

/// `a == b` in a time that does not tell how much of them matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn loopback_through_a_proxy_needs_the_token() {
        let mut proxied = http::HeaderMap::new();
        proxied.insert("x-forwarded-for", http::HeaderValue::from_static("203.0.113.9"));
        assert!(!StatsAccess::loopback().permits(ip("127.0.0.1"), &proxied, None));
        assert!(StatsAccess::loopback().permits(ip("::1"), &http::HeaderMap::new(), None));
        assert!(StatsAccess::loopback().permits(ip("::ffff:127.0.0.1"), &http::HeaderMap::new(), None));
        assert!(StatsAccess::loopback().token("t").permits(ip("127.0.0.1"), &proxied, Some("a=1&token=t")));
    }

    #[test]
    fn no_token_opens_nothing() {
        let none = StatsAccess::loopback().token("  ");
        assert!(!none.has_token());
        assert!(!none.permits(ip("192.0.2.1"), &http::HeaderMap::new(), Some("token=")));
        assert!(!none.permits(None, &http::HeaderMap::new(), None));
    }
}
