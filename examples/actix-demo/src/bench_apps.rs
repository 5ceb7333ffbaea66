//! The app and the middleware both actix-web benchmarks measure: `actix-bench-server` (wrk over
//! loopback) and `actix-bench-count` (in-process, instructions and allocations), which include
//! this file by path, so that the two measure the same things.

use actix_governor::governor::middleware::NoOpMiddleware;
use actix_governor::{GovernorConfigBuilder, PeerIpKeyExtractor};
use actix_web::Error;
use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use tollgate::{HeaderOptions, KeyKind, Limit, Policy};
use tollgate_actix::RateLimit;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A quota nothing in the bench exceeds, with a burst of a realistic size (so the headers carry
/// numbers of a realistic size too).
pub(crate) const ALLOW: &str = "1000000000/s burst 100";
/// A quota every request after the first exceeds.
pub(crate) const REFUSE: &str = "1/h";

pub(crate) async fn hello() -> &'static str {
    "hello"
}

pub(crate) fn tollgate(quota: &str, headers: HeaderOptions) -> Result<RateLimit, BoxError> {
    let policy = Policy::builder("api").limit(Limit::new("per_ip", quota.parse()?).key(KeyKind::ip())).build()?;
    Ok(RateLimit::new(policy).headers(headers))
}

/// actix-governor's builder on the allow path (the same rate and burst as [`ALLOW`]) or the
/// refusal path.
pub(crate) fn governor_builder(allow: bool) -> GovernorConfigBuilder<PeerIpKeyExtractor, NoOpMiddleware> {
    let mut builder = GovernorConfigBuilder::default();
    if allow {
        builder.nanoseconds_per_request(1).burst_size(100);
    } else {
        builder.seconds_per_request(3600).burst_size(1);
    }
    builder
}

/// The floor of any rate-limit headers (for `App::wrap_fn`): a middleware that adds tollgate's
/// three `X-RateLimit-*` headers, with fixed values of the bench's sizes, to every response and
/// decides nothing.
pub(crate) fn fixed_headers<S>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<BoxBody>, Error>> + use<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
{
    let response = srv.call(req);
    async move {
        const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        let mut response = response.await?;
        let h = response.headers_mut();
        h.insert(LIMIT, HeaderValue::from_static("100"));
        h.insert(REMAINING, HeaderValue::from_static("99"));
        h.insert(RESET, HeaderValue::from_static("1"));
        Ok(response)
    }
}
