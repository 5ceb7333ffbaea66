//! Rendering a [`Decision`] into response headers and a refusal body, in one place for every
//! adapter.
//!
//! Header styles (any combination; [`HeaderOptions::default`] is the first):
//! - **X-RateLimit**: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`, plus
//!   `Retry-After` on refusals. `X-RateLimit-Reset` is, per [`ResetStyle`], the seconds until the
//!   key is back to full capacity (default) or that moment as Unix epoch seconds (as GitHub sends).
//! - **IETF** (draft-ietf-httpapi-ratelimit-headers-11): `RateLimit-Policy: "per_ip";q=100;w=60`
//!   and `RateLimit: "per_ip";r=0;t=17`, with `q` the quota's amount, `w` its period in seconds,
//!   `r` what remains and `t` the seconds until reset.
//! - **Spring Cloud Gateway**: `X-RateLimit-Replenish-Rate` (units per second, rounded up),
//!   `X-RateLimit-Burst-Capacity`, `X-RateLimit-Requested-Tokens` and `X-RateLimit-Remaining`.
//!
//! `Retry-After` (whole seconds, rounded up, never 0) is on every refusal whatever the style.
//!
//! ```
//! use std::num::NonZeroU32;
//! use tollgate::{Policy, Limit, Quota, KeyKind, RequestKeys, HeaderOptions};
//!
//! # tokio_test_block_on(async {
//! let policy = Policy::builder("api")
//!     .limit(Limit::new("per_ip", Quota::per_minute(NonZeroU32::new(1).unwrap())).key(KeyKind::ip()))
//!     .build()?;
//! let keys = RequestKeys { ip: Some("10.0.0.1".parse().unwrap()), ..RequestKeys::default() };
//! assert!(policy.check(&keys, 1).await?.allowed);
//! let refused = policy.check(&keys, 1).await?;
//! assert_eq!(refused.status(), 429);
//!
//! let mut headers = http::HeaderMap::new();
//! HeaderOptions::default().render(&refused, &mut headers);
//! assert_eq!(headers["retry-after"], "60");
//! assert_eq!(headers["x-ratelimit-remaining"], "0");
//! let (_content_type, body) = HeaderOptions::default().refusal_body(&refused);
//! assert_eq!(body, br#"{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":60}"#);
//! # Ok::<(), tollgate::Error>(()) }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
//! ```

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, LimitHeaders, ceil_secs};

/// Where rendered header fields go: an `http` 1.x [`HeaderMap`] (tower, axum, warp, hyper), or an
/// adapter's own header map (actix-web's), converting each field as it comes, with no map in
/// between.
///
/// ```
/// use http::{HeaderName, HeaderValue};
/// use tollgate::headers::HeaderSink;
///
/// /// A map of another framework, here a list of text pairs.
/// struct Pairs(Vec<(String, String)>);
/// impl HeaderSink for Pairs {
///     fn set(&mut self, name: HeaderName, value: HeaderValue) {
///         self.0.retain(|(n, _)| n != name.as_str());
///         self.0.push((name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()));
///     }
/// }
/// let mut pairs = Pairs(Vec::new());
/// tollgate::HeaderOptions::default().render_numbers(10, 7, std::time::Duration::from_secs(1), &mut pairs);
/// assert!(pairs.0.contains(&("x-ratelimit-remaining".into(), "7".into())));
/// ```
pub trait HeaderSink {
    /// Sets the field `name` to `value`, replacing any value it had.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
}

impl HeaderSink for HeaderMap {
    #[inline]
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

/// What `X-RateLimit-Reset` carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetStyle {
    /// Seconds until the key is back to full capacity (rounded up). The default.
    #[default]
    Seconds,
    /// The Unix time (seconds) at which the key is back to full capacity.
    EpochSeconds,
}

/// The refusal body's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/json`: `{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":3}`.
    #[default]
    Json,
    /// `application/problem+json` (RFC 9457), with the same fields as extension members.
    Problem,
}

/// Which headers and body a decision renders to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderOptions {
    /// `X-RateLimit-Limit`/`-Remaining`/`-Reset` (default on).
    pub x_ratelimit: bool,
    /// IETF `RateLimit` / `RateLimit-Policy` (default off).
    pub ietf: bool,
    /// Spring Cloud Gateway's headers (default off).
    pub spring: bool,
    /// What `X-RateLimit-Reset` carries.
    pub reset: ResetStyle,
    /// The refusal body's format.
    pub body: BodyFormat,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        Self { x_ratelimit: true, ietf: false, spring: false, reset: ResetStyle::Seconds, body: BodyFormat::Json }
    }
}

// `const`, not `static`: each use is a copy made at compile time, not a clone at run time.
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const SPRING_RATE: HeaderName = HeaderName::from_static("x-ratelimit-replenish-rate");
const SPRING_BURST: HeaderName = HeaderName::from_static("x-ratelimit-burst-capacity");
const SPRING_REQUESTED: HeaderName = HeaderName::from_static("x-ratelimit-requested-tokens");

/// The decimal digits of 0..1000, three bytes each (zero-padded), so that the numbers rate-limit
/// headers carry most often become header values without allocating.
static SMALL: [u8; 3000] = {
    let mut table = [0u8; 3000];
    let mut n = 0;
    while n < 1000 {
        table[3 * n] = b'0' + (n / 100) as u8;
        table[3 * n + 1] = b'0' + (n / 10 % 10) as u8;
        table[3 * n + 2] = b'0' + (n % 10) as u8;
        n += 1;
    }
    table
};

/// The header values of 0..1000, made once from [`SMALL`]: cloning one copies a pointer (they
/// borrow static bytes), where making it anew would check its bytes again.
static SMALL_VALUES: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
    (0..1000)
        .map(|n: usize| {
            let skip = if n >= 100 {
                0
            } else if n >= 10 {
                1
            } else {
                2
            };
            let digits: &'static [u8] = &SMALL[3 * n + skip..3 * n + 3];
            std::str::from_utf8(digits).map_or_else(|_| HeaderValue::from(n), HeaderValue::from_static)
        })
        .collect()
});

/// `n` as a header value: shared from [`SMALL_VALUES`] below 1000, else written into a per-thread
/// arena and shared from it (http's `From<u64>` makes two allocations per value; the arena makes
/// one per few hundred values, freed when the last response using it is dropped).
#[inline]
fn num(n: u64) -> HeaderValue {
    if let Some(value) = usize::try_from(n).ok().and_then(|n| SMALL_VALUES.get(n)) {
        return value.clone();
    }
    large(n)
}

fn large(n: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    let bytes = ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < digits.len() {
            *arena = BytesMut::with_capacity(ARENA_SIZE);
        }
        arena.extend_from_slice(digits);
        arena.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from(n))
}

/// A refusal body's fields.
#[derive(Serialize)]
struct RefusalFields<'a> {
    error: &'static str,
    policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
    retry_after: u64,
}

impl<'a> RefusalFields<'a> {
    fn of(decision: &'a Decision) -> Self {
        RefusalFields {
            error: decision.reason.as_str(),
            policy: decision.policy,
            limit: decision.limit.as_ref().map(|l| l.name),
            retry_after: decision.retry_after_secs(),
        }
    }
}

/// Whether `s` is a JSON string's content as it is: printable ASCII with no quote or backslash.
fn json_as_is(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

const ARENA_SIZE: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static CONSTANTS: RefCell<[(u64, Option<HeaderValue>); 8]> = const { RefCell::new([const { (0, None) }; 8]) };
}

/// [`num`] for a number that changes seldom from one response to the next — a limit's capacity or
/// rate, and seconds (`Retry-After`, the reset), which change once a second: the last few such
/// values of each thread are kept, so that most responses share one instead of writing their own.
#[inline]
fn constant(n: u64) -> HeaderValue {
    if n < 1000 {
        return num(n);
    }
    cached(n)
}

fn cached(n: u64) -> HeaderValue {
    CONSTANTS.with_borrow_mut(|cache| {
        let slot = &mut cache[(n % 8) as usize];
        if slot.0 == n
            && let Some(value) = &slot.1
        {
            return value.clone();
        }
        let value = num(n);
        *slot = (n, Some(value.clone()));
        value
    })
}

/// A structured-field string: quotes and backslashes escaped, other non-printable bytes dropped.
fn sf_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

impl HeaderOptions {
    /// Writes the decision's headers (on allowed and refused decisions alike; nothing when no
    /// limit applied). Uses the system clock for [`ResetStyle::EpochSeconds`].
    pub fn render(&self, decision: &Decision, headers: &mut (impl HeaderSink + ?Sized)) {
        self.render_with(decision, headers, SystemTime::now);
    }

    /// [`HeaderOptions::render`] with the current time given.
    pub fn render_at(&self, decision: &Decision, headers: &mut (impl HeaderSink + ?Sized), now: SystemTime) {
        self.render_with(decision, headers, || now);
    }

    /// Whether any header style that carries a limit's numbers is on: when none is, a middleware
    /// need not keep them for an allowed response. Refusals do not depend on it: their
    /// `Retry-After` and body are always written.
    #[inline]
    pub fn writes_limit(&self) -> bool {
        self.x_ratelimit || self.ietf || self.spring
    }

    /// Writes the headers an allowed response carries (everything [`HeaderOptions::render`]
    /// writes but `Retry-After`), from what a middleware kept of the decision.
    #[inline]
    pub fn render_limit(&self, limit: &LimitHeaders, headers: &mut (impl HeaderSink + ?Sized)) {
        self.render_limit_with(limit, headers, SystemTime::now);
    }

    /// Reads the clock only for [`ResetStyle::EpochSeconds`].
    fn render_with(
        &self,
        decision: &Decision,
        headers: &mut (impl HeaderSink + ?Sized),
        now: impl FnOnce() -> SystemTime,
    ) {
        if !decision.allowed {
            headers.set(RETRY_AFTER, constant(decision.retry_after_secs()));
        }
        if let Some(limit) = decision.limit_headers() {
            self.render_limit_with(&limit, headers, now);
        }
    }

    /// Whether a style other than X-RateLimit is on: those need the limit's name and quota, where
    /// X-RateLimit needs only the three numbers [`HeaderOptions::render_numbers`] takes.
    #[inline]
    pub fn needs_name_and_quota(&self) -> bool {
        self.ietf || self.spring
    }

    /// Writes the X-RateLimit headers (when that style is on) from their numbers alone: the
    /// limit's capacity, what remains, and how long until it is back to full. For a middleware that
    /// keeps these instead of a whole [`LimitHeaders`] when
    /// [`HeaderOptions::needs_name_and_quota`] is false; [`HeaderOptions::render_limit`] writes
    /// the same headers.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut headers = http::HeaderMap::new();
    /// tollgate::HeaderOptions::default().render_numbers(10, 7, Duration::from_millis(600), &mut headers);
    /// assert_eq!(headers["x-ratelimit-limit"], "10");
    /// assert_eq!(headers["x-ratelimit-remaining"], "7");
    /// assert_eq!(headers["x-ratelimit-reset"], "1");
    /// ```
    #[inline]
    pub fn render_numbers(
        &self,
        limit: u64,
        remaining: u64,
        reset_after: Duration,
        headers: &mut (impl HeaderSink + ?Sized),
    ) {
        self.render_numbers_with(limit, remaining, reset_after, headers, SystemTime::now);
    }

    fn render_numbers_with(
        &self,
        limit: u64,
        remaining: u64,
        reset_after: Duration,
        headers: &mut (impl HeaderSink + ?Sized),
        now: impl FnOnce() -> SystemTime,
    ) {
        if !self.x_ratelimit {
            return;
        }
        headers.set(X_LIMIT, constant(limit));
        headers.set(X_REMAINING, num(remaining));
        let value = match self.reset {
            ResetStyle::Seconds => ceil_secs(reset_after),
            ResetStyle::EpochSeconds => {
                let now = now();
                let at = now.checked_add(reset_after).unwrap_or(now);
                ceil_secs(at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
            }
        };
        headers.set(X_RESET, constant(value));
    }

    fn render_limit_with(
        &self,
        limit: &LimitHeaders,
        headers: &mut (impl HeaderSink + ?Sized),
        now: impl FnOnce() -> SystemTime,
    ) {
        self.render_numbers_with(limit.limit, limit.remaining, limit.reset_after, headers, now);
        if self.ietf {
            let mut policy = String::with_capacity(48);
            sf_string(limit.name, &mut policy);
            let _ = write!(policy, ";q={};w={}", limit.quota.amount(), ceil_secs(limit.quota.period()).max(1));
            let mut state = String::with_capacity(48);
            sf_string(limit.name, &mut state);
            let _ = write!(state, ";r={};t={}", limit.remaining, ceil_secs(limit.reset_after));
            if let Ok(v) = HeaderValue::try_from(policy) {
                headers.set(RATELIMIT_POLICY, v);
            }
            if let Ok(v) = HeaderValue::try_from(state) {
                headers.set(RATELIMIT, v);
            }
        }
        if self.spring {
            let q = limit.quota;
            let per_sec = (u128::from(q.amount().get()) * 1_000_000_000).div_ceil(q.period().as_nanos().max(1));
            headers.set(SPRING_RATE, constant(u64::try_from(per_sec).unwrap_or(u64::MAX)));
            headers.set(SPRING_BURST, constant(u64::from(q.burst().get())));
            headers.set(SPRING_REQUESTED, num(1));
            headers.set(X_REMAINING, num(limit.remaining));
        }
    }

    /// The refusal's body and its content type.
    pub fn refusal_body(&self, decision: &Decision) -> (HeaderValue, Vec<u8>) {
        let fields = RefusalFields::of(decision);
        if self.body == BodyFormat::Json && json_as_is(fields.policy) && fields.limit.is_none_or(json_as_is) {
            // What serde_json writes of `fields` below, without its machinery: names seldom need
            // escaping.
            let mut out = Vec::with_capacity(96);
            out.extend_from_slice(br#"{"error":""#);
            out.extend_from_slice(fields.error.as_bytes());
            out.extend_from_slice(br#"","policy":""#);
            out.extend_from_slice(fields.policy.as_bytes());
            if let Some(limit) = fields.limit {
                out.extend_from_slice(br#"","limit":""#);
                out.extend_from_slice(limit.as_bytes());
            }
            out.extend_from_slice(br#"","retry_after":"#);
            out.extend_from_slice(itoa::Buffer::new().format(fields.retry_after).as_bytes());
            out.push(b'}');
            return (HeaderValue::from_static("application/json"), out);
        }
        self.body(decision.status(), fields)
    }

    /// The body of a refusal the middleware makes without a [`Decision`] — 413 Payload Too Large,
    /// 411 Length Required, a 500 when a check failed — in the same format as rate-limit
    /// refusals, so that every adapter answers them alike: `{"error":"payload_too_large","limit":65536}`,
    /// or with `type`/`title`/`status` added in [`BodyFormat::Problem`]. `error` is a short
    /// machine-readable name; `limit` the limit that was exceeded, when there is one.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tollgate::HeaderOptions;
    ///
    /// let (content_type, body) = HeaderOptions::default().error_body(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(65536));
    /// assert_eq!(content_type, "application/json");
    /// assert_eq!(body, br#"{"error":"payload_too_large","limit":65536}"#);
    /// ```
    pub fn error_body(&self, status: http::StatusCode, error: &str, limit: Option<u64>) -> (HeaderValue, Vec<u8>) {
        #[derive(Serialize)]
        struct Fields<'a> {
            error: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u64>,
        }
        self.body(status, Fields { error, limit })
    }

    /// `fields` as JSON, or as problem+json (RFC 9457) with `type`, `title` and `status` first.
    fn body(&self, status: http::StatusCode, fields: impl Serialize) -> (HeaderValue, Vec<u8>) {
        #[derive(Serialize)]
        struct Problem<F> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            title: Option<&'static str>,
            status: u16,
            #[serde(flatten)]
            fields: F,
        }
        match self.body {
            BodyFormat::Json => {
                (HeaderValue::from_static("application/json"), serde_json::to_vec(&fields).unwrap_or_default())
            }
            BodyFormat::Problem => {
                let problem =
                    Problem { kind: "about:blank", title: status.canonical_reason(), status: status.as_u16(), fields };
                (HeaderValue::from_static("application/problem+json"), serde_json::to_vec(&problem).unwrap_or_default())
            }
        }
    }

    /// Writes the refusal's content type into `headers` and returns its body.
    pub fn refusal(&self, decision: &Decision, headers: &mut (impl HeaderSink + ?Sized)) -> Vec<u8> {
        self.render(decision, headers);
        let (ct, body) = self.refusal_body(decision);
        headers.set(CONTENT_TYPE, ct);
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_follow_the_body_format() {
        let problem = HeaderOptions { body: BodyFormat::Problem, ..HeaderOptions::default() };
        let (ct, body) = problem.error_body(http::StatusCode::LENGTH_REQUIRED, "length_required", None);
        assert_eq!(ct, "application/problem+json");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"about:blank","title":"Length Required","status":411,"error":"length_required"}"#
        );
    }

    #[test]
    fn problem_refusals_carry_their_own_status_and_title() {
        let problem = HeaderOptions { body: BodyFormat::Problem, ..HeaderOptions::default() };
        let decision = Decision {
            allowed: false,
            reason: crate::Reason::StoreUnavailable,
            policy: "api",
            limit: None,
            wait: Duration::ZERO,
            dry_run_refused: false,
        };
        let (ct, body) = problem.refusal_body(&decision);
        assert_eq!(ct, "application/problem+json");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"error":"store_unavailable","policy":"api","retry_after":1}"#
        );
        let (ct, body) = HeaderOptions::default().refusal_body(&decision);
        assert_eq!(ct, "application/json");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"error":"store_unavailable","policy":"api","retry_after":1}"#
        );
    }

    #[test]
    fn refusal_bodies_written_by_hand_match_serde_json() {
        let decision = |policy: &'static str, limit: Option<&'static str>, reason, retry: u64| Decision {
            allowed: false,
            reason,
            policy,
            limit: limit.map(|name| crate::LimitState {
                name,
                quota: crate::Quota::per_second(std::num::NonZeroU32::MIN),
                snapshot: crate::Snapshot { retry_after: Duration::from_secs(retry), ..crate::Snapshot::EMPTY },
            }),
            wait: Duration::ZERO,
            dry_run_refused: false,
        };
        let json = HeaderOptions::default();
        let cases = [
            decision("api", Some("per_ip"), crate::Reason::RateLimited, 3),
            decision("api", None, crate::Reason::StoreUnavailable, 0),
            decision("body_bytes:/api/echo", Some("x"), crate::Reason::Blocked, 86_400),
            decision("we\"ird", Some("tab\there"), crate::Reason::RateLimited, 1),
            decision("ünïcode", Some("per_ip"), crate::Reason::DenyListed, 12_345_678_901),
        ];
        for d in &cases {
            let (ct, body) = json.refusal_body(d);
            assert_eq!(ct, "application/json");
            assert_eq!(String::from_utf8(body).unwrap(), serde_json::to_string(&RefusalFields::of(d)).unwrap());
        }
    }

    #[test]
    fn writes_limit_is_whether_any_style_writes_the_numbers() {
        let off = HeaderOptions { x_ratelimit: false, ietf: false, spring: false, ..HeaderOptions::default() };
        assert!(!off.writes_limit());
        assert!(HeaderOptions { x_ratelimit: true, ..off }.writes_limit());
        assert!(HeaderOptions { ietf: true, ..off }.writes_limit());
        assert!(HeaderOptions { spring: true, ..off }.writes_limit());
    }

    #[test]
    fn render_limit_writes_what_render_does_but_retry_after() {
        let all = HeaderOptions { ietf: true, spring: true, ..HeaderOptions::default() };
        let snapshot = crate::Snapshot {
            allowed: false,
            limit: 40,
            remaining: 7,
            reset_after: Duration::from_millis(2_500),
            retry_after: Duration::from_secs(3),
            ..crate::Snapshot::EMPTY
        };
        let quota: crate::Quota = "20/s burst 40".parse().unwrap();
        let decision = Decision {
            allowed: false,
            reason: crate::Reason::RateLimited,
            policy: "api",
            limit: Some(crate::LimitState { name: "per_ip", quota, snapshot }),
            wait: Duration::ZERO,
            dry_run_refused: false,
        };
        let (mut full, mut kept) = (HeaderMap::new(), HeaderMap::new());
        all.render(&decision, &mut full);
        all.render_limit(&decision.limit_headers().unwrap(), &mut kept);
        assert_eq!(full.remove(RETRY_AFTER).unwrap(), "3");
        assert_eq!(full, kept);
        assert_eq!(kept["x-ratelimit-remaining"], "7");
        assert_eq!(kept["ratelimit"], "\"per_ip\";r=7;t=3");
    }

    #[test]
    fn render_numbers_writes_what_render_limit_does_for_the_x_ratelimit_style() {
        let snapshot = crate::Snapshot {
            limit: 1_500,
            remaining: 1_499,
            reset_after: Duration::from_millis(2_500),
            ..crate::Snapshot::EMPTY
        };
        let limit = LimitHeaders::of("per_ip", "20/s burst 1500".parse().unwrap(), &snapshot);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for reset in [ResetStyle::Seconds, ResetStyle::EpochSeconds] {
            for x_ratelimit in [true, false] {
                let options = HeaderOptions { x_ratelimit, reset, ..HeaderOptions::default() };
                assert!(!options.needs_name_and_quota());
                let (mut full, mut numbers) = (HeaderMap::new(), HeaderMap::new());
                options.render_limit_with(&limit, &mut full, || now);
                options.render_numbers_with(1_500, 1_499, limit.reset_after, &mut numbers, || now);
                assert_eq!(full, numbers);
                assert_eq!(numbers.len(), if x_ratelimit { 3 } else { 0 });
            }
        }
        assert!(HeaderOptions { ietf: true, ..HeaderOptions::default() }.needs_name_and_quota());
        assert!(HeaderOptions { spring: true, ..HeaderOptions::default() }.needs_name_and_quota());
    }

    #[test]
    fn numbers_render_as_http_does() {
        for n in (0..2000).chain([9_999, 10_000, 123_456_789, u64::from(u32::MAX), u64::MAX - 1, u64::MAX]) {
            assert_eq!(num(n), HeaderValue::from(n), "{n}");
            assert_eq!(constant(n), HeaderValue::from(n), "{n}");
        }
        // Cached values are returned again, and slots shared by several values stay right.
        for n in [1_000_000_000, 1_000_000_008, 1_000_000_000, 5_000, 1_000_000_008] {
            assert_eq!(constant(n), HeaderValue::from(n), "{n}");
        }
    }
}
