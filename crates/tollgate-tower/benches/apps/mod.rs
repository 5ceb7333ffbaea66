//! The app and the layers both middleware benchmarks measure: this crate's `middleware` bench
//! (a tower service, no sockets) and `examples/axum-demo`'s `bench-server` (wrk over loopback),
//! which includes this file by path, so that the two measure the same things.

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use tollgate::{HeaderOptions, KeyKind, Limit, MemoryStore, Policy};
use tollgate_tower::{AxumBody, RateLimitLayer};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The app, with its handlers turned into routes up front (`with_state`), as `axum::serve` does
/// for a `Router`: a `Router` served as a plain service would turn its handler into a route, and
/// apply its layers, on every request.
pub(crate) fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" })).with_state(())
}

/// A quota nothing in the bench exceeds (a request takes far longer than a nanosecond), with a
/// burst of a realistic size, so that the headers carry numbers of a realistic size too.
pub(crate) const ALLOW: &str = "1000000000/s burst 100";
/// A quota every request after the first exceeds.
pub(crate) const REFUSE: &str = "1/h";

/// A policy of one per-IP `quota`.
pub(crate) fn per_ip(quota: &str) -> Result<Policy, BoxError> {
    Ok(Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?)
}

/// tollgate on a per-IP `quota`, as the README recommends for axum (`axum_body()`), with
/// `headers` on its responses.
pub(crate) fn tollgate(quota: &str, headers: HeaderOptions) -> Result<RateLimitLayer<MemoryStore, AxumBody>, BoxError> {
    Ok(RateLimitLayer::new(per_ip(quota)?).headers(headers).axum_body())
}

/// tower_governor's layer on its allow path (the same quota as [`ALLOW`]) or refusal path, as a
/// `Result`; `headers` adds its `x-ratelimit-limit`/`-remaining` headers on allowed responses
/// (`use_headers`, which changes the layer's type). A macro: the layer's type names a type
/// tower_governor does not export.
macro_rules! governor {
    (@builder $allow:expr) => {{
        let mut builder = tower_governor::governor::GovernorConfigBuilder::default();
        if $allow {
            builder.per_nanosecond(1).burst_size(100);
        } else {
            builder.per_second(3600).burst_size(1);
        }
        builder
    }};
    (@layer $config:expr) => {
        $config
            .map(|config| tower_governor::GovernorLayer::new(std::sync::Arc::new(config)))
            .ok_or_else(|| $crate::apps::BoxError::from("bad governor config"))
    };
    ($allow:expr) => {
        governor!(@layer governor!(@builder $allow).finish())
    };
    ($allow:expr, headers) => {
        governor!(@layer governor!(@builder $allow).use_headers().finish())
    };
}

/// The floor of any rate-limit headers: a layer that adds tollgate's three `X-RateLimit-*`
/// headers, with fixed values of the bench's sizes, to every response and decides nothing. What
/// `http::HeaderMap` takes to insert them (hashing each custom name) is the same for any limiter.
pub(crate) fn fixed_headers() -> tower::util::MapResponseLayer<fn(Response) -> Response> {
    tower::util::MapResponseLayer::new(|mut res: Response| {
        const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        let h = res.headers_mut();
        h.insert(LIMIT, HeaderValue::from_static("100"));
        h.insert(REMAINING, HeaderValue::from_static("99"));
        h.insert(RESET, HeaderValue::from_static("1"));
        res
    })
}
