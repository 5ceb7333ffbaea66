//! The core's header fields (`http` 1.x names and values) written into actix's header map
//! (`http` 0.2 types): the one conversion the adapter makes of the plan, and of a refusal.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tollgate::HeaderSink;
use tollgate::engine::Refusal;

/// The core's refusal as actix's response: its status, and the header fields and body the core
/// renders for it. Every refusal the adapter sends goes through here. Out of the allow path.
#[inline(never)]
pub(crate) fn response(refusal: &Refusal) -> HttpResponse {
    let status = StatusCode::from_u16(refusal.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::new(status);
    let body = refusal.render_into(&mut Fields(response.headers_mut()));
    response.set_body(BoxBody::new(body))
}

/// actix's header map as the core's [`HeaderSink`]: each field the core renders is converted and
/// set as it comes, with no `http` 1.x map in between.
pub(crate) struct Fields<'a>(pub(crate) &'a mut HeaderMap);

impl HeaderSink for Fields<'_> {
    #[inline]
    fn set(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        if let (Some(name), Some(value)) = (header_name(name.as_str()), header_value(value.as_bytes())) {
            self.0.insert(name, value);
        }
    }
}

/// The core's header name as actix's: the names the core writes from constants, with no
/// allocation; any other name parsed.
#[inline]
pub(crate) fn header_name(name: &str) -> Option<HeaderName> {
    const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    Some(match name {
        "x-ratelimit-limit" => LIMIT,
        "x-ratelimit-remaining" => REMAINING,
        "x-ratelimit-reset" => RESET,
        "ratelimit" => RATELIMIT,
        "ratelimit-policy" => RATELIMIT_POLICY,
        "retry-after" => header::RETRY_AFTER,
        "content-type" => header::CONTENT_TYPE,
        other => HeaderName::from_bytes(other.as_bytes()).ok()?,
    })
}

/// The header values of the numbers 0 to 9999, made once per process: slices of one static
/// string (`0123456789101112...9999`, 38,890 bytes), so that a clone copies no bytes.
static NUMBERS: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
    let all: String = (0..10_000u32).map(|n| n.to_string()).collect();
    // Built once per process and kept for its life: the values borrow it.
    let all: &'static str = Box::leak(all.into_boxed_str());
    let mut at = 0;
    (0..10_000u32)
        .map(|n| {
            let len = n.checked_ilog10().map_or(1, |digits| digits as usize + 1);
            let value = HeaderValue::from_static(all.get(at..at + len).unwrap_or("0"));
            at += len;
            value
        })
        .collect()
});

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The core's header value as actix's. The numbers the rate-limit headers mostly carry (up to
/// 9999: limits, what remains, seconds to reset or retry) and the refusal bodies' content types
/// are made once, with no allocation per response; any other value is copied.
#[inline]
pub(crate) fn header_value(value: &[u8]) -> Option<HeaderValue> {
    if let Some(number) = small_number(value).and_then(|n| NUMBERS.get(n)) {
        return Some(number.clone());
    }
    match value {
        b"application/json" => Some(JSON),
        b"application/problem+json" => Some(PROBLEM_JSON),
        _ => HeaderValue::from_bytes(value).ok(),
    }
}

/// `value` as a number when it is one of 0 to 9999 written without leading zeros.
#[inline]
fn small_number(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 4 || (value.len() > 1 && value[0] == b'0') {
        return None;
    }
    value.iter().try_fold(0, |n, &d| d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0')))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_from_the_static_table_and_the_rest_is_copied() {
        for n in [0usize, 7, 9, 10, 42, 99, 100, 512, 999, 1000, 3600, 9999] {
            let text = n.to_string();
            assert_eq!(header_value(text.as_bytes()).unwrap(), text.as_str());
        }
        for other in ["10000", "007", "-1", "1.5", "", "application/json", "text/plain", "a b"] {
            assert_eq!(header_value(other.as_bytes()).unwrap(), other);
        }
        assert!(header_value(b"bad\nvalue").is_none());
    }

    #[test]
    fn fields_are_set_in_actix_map_as_the_core_renders_them() {
        let mut into = HeaderMap::new();
        into.insert(header::RETRY_AFTER, HeaderValue::from_static("99"));
        let mut fields = Fields(&mut into);
        fields.set(http::HeaderName::from_static("x-ratelimit-limit"), http::HeaderValue::from_static("10"));
        fields.set(http::header::RETRY_AFTER, http::HeaderValue::from_static("3"));
        fields.set(http::HeaderName::from_static("x-custom"), http::HeaderValue::from_static("a b"));
        assert_eq!(into.get("x-ratelimit-limit").unwrap(), "10");
        assert_eq!(into.get("retry-after").unwrap(), "3", "a field the core sets replaces the old value");
        assert_eq!(into.get("x-custom").unwrap(), "a b");
    }
}
