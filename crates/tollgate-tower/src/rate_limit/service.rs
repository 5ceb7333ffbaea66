//! The middleware service.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{Full, Limited};
use tollgate::{ConcurrencyScope, ConnectionLease, Decision, Error, HeaderOptions, Key, MemoryStore, Reason, Store};
use tower::Service;

use super::body::ResponseBody;
use super::future::{BoxPrepare, ResponseFuture};
use super::layer::{Config, Limits, plain_error};
use crate::websocket::UpgradeLease;

/// The middleware: see the [module docs](crate::rate_limit).
pub struct RateLimit<S, St: Store = MemoryStore> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S: Clone, St: Store> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: Arc::clone(&self.config) }
    }
}

impl<S: fmt::Debug, St: Store> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, St: Store> RateLimit<S, St> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
    }

    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &super::RateLimitLayer<St>) -> Self {
        Self::from_config(inner, Arc::clone(&layer.config))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the checks concluded: go on (after `wait`), or answer with a refusal.
// Moved once per request; boxing the large variant would allocate on the allow path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared<B> {
    Go { request: Request<Limited<B>>, extra: Extra, wait: Duration },
    Refuse(Response<Full<Bytes>>),
}

/// What the response needs from the checks.
pub(crate) struct Extra {
    pub(crate) decision: Option<Decision>,
    pub(crate) headers: HeaderOptions,
    pub(crate) lease: Option<ConnectionLease>,
    pub(crate) upgrade: Option<UpgradeLease>,
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St>
where
    S: Service<Request<Limited<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: Store,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The in-memory store decides at once: run the checks inline, with nothing boxed.
        if TypeId::of::<St>() == TypeId::of::<MemoryStore>() {
            let prepared = {
                let fut = pin!(prepare(&self.config, request));
                match fut.poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(prepared) => prepared,
                    // Unreachable with the in-memory store, whose futures are always ready.
                    Poll::Pending => {
                        Prepared::Refuse(plain_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None))
                    }
                }
            };
            return match prepared {
                Prepared::Go { request, extra, wait } if wait.is_zero() => {
                    ResponseFuture::inner(self.inner.call(request), extra)
                }
                Prepared::Go { request, extra, wait } => {
                    let prep: BoxPrepare<ReqBody> = Box::pin(async move {
                        tokio::time::sleep(wait).await;
                        Prepared::Go { request, extra, wait: Duration::ZERO }
                    });
                    ResponseFuture::preparing(prep, self.take_ready_inner())
                }
                Prepared::Refuse(response) => ResponseFuture::refused(response),
            };
        }
        // A remote store: check asynchronously, then call the inner service.
        let config = Arc::clone(&self.config);
        let prep: BoxPrepare<ReqBody> = Box::pin(async move {
            match prepare(&config, request).await {
                Prepared::Go { request, extra, wait } => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    Prepared::Go { request, extra, wait: Duration::ZERO }
                }
                refused => refused,
            }
        });
        ResponseFuture::preparing(prep, self.take_ready_inner())
    }
}

impl<S: Clone, St: Store> RateLimit<S, St> {
    /// The service made ready by `poll_ready`, leaving a clone in its place (tower's rule: the
    /// ready one must serve this request).
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// Runs every check of the request's limits, in order: request policy, body size, body bytes,
/// concurrency lease.
async fn prepare<St: Store, B>(config: &Config<St>, request: Request<B>) -> Prepared<B> {
    let limits: &Limits<St> = config.limits_for(&request);
    let (mut parts, body) = request.into_parts();
    let mut decision = None;
    let mut lease = None;
    let mut upgrade = None;
    {
        let keys = config.keys.keys_of_parts(&parts);
        if let Some(policy) = &limits.policy {
            match policy.check(&keys, 1).await {
                Ok(d) if d.allowed => decision = Some(d),
                Ok(d) => return Prepared::Refuse(config.refusal(&d, d.status())),
                Err(err) => return Prepared::Refuse(internal(&err)),
            }
        }
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(max), Some(len)) = (limits.max_body, length)
            && len > max
        {
            return Prepared::Refuse(plain_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(max)));
        }
        if let Some(policy) = &limits.body_bytes {
            let Some(cost) = length.or(limits.max_body) else {
                return Prepared::Refuse(plain_error(StatusCode::LENGTH_REQUIRED, "length_required", None));
            };
            if cost > 0 {
                let cost = u32::try_from(cost).unwrap_or(u32::MAX);
                match policy.check(&keys, cost).await {
                    Ok(d) if d.allowed => {
                        if decision.is_none() {
                            decision = Some(d);
                        }
                    }
                    Ok(d) => return Prepared::Refuse(config.refusal(&d, d.status())),
                    // Larger than the byte limit can ever admit at once.
                    Err(Error::InvalidCost { capacity, .. }) => {
                        return Prepared::Refuse(plain_error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            Some(capacity),
                        ));
                    }
                    Err(err) => return Prepared::Refuse(internal(&err)),
                }
            }
        }
        let lease_key = config.lease_key.resolve(&keys).unwrap_or(Key::Text("\u{0}missing"));
        if let Some(limiter) = &limits.in_flight {
            match limiter.try_acquire(lease_key) {
                Ok(l) => lease = Some(l),
                Err(denied) => return Prepared::Refuse(concurrency_refusal(config, &denied)),
            }
        }
        if let Some(ws) = &limits.websocket {
            match ws.connections.try_acquire(lease_key) {
                Ok(l) => upgrade = Some(UpgradeLease::new(l, Arc::clone(&ws.messages))),
                Err(denied) => return Prepared::Refuse(concurrency_refusal(config, &denied)),
            }
        }
    }
    if let Some(upgrade) = &upgrade {
        parts.extensions.insert(upgrade.clone());
    }
    let wait = decision.as_ref().map_or(Duration::ZERO, |d| d.wait);
    let max = limits.max_body.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let request = Request::from_parts(parts, Limited::new(body, max));
    Prepared::Go { request, extra: Extra { decision, headers: config.headers, lease, upgrade }, wait }
}

/// 429 when the key holds its maximum, 503 when the global cap is full; rendered by the core as
/// a rate-limit refusal (`Retry-After: 1`).
fn concurrency_refusal<St: Store>(config: &Config<St>, denied: &tollgate::ConcurrencyDenied) -> Response<Full<Bytes>> {
    let decision = Decision {
        allowed: false,
        reason: Reason::RateLimited,
        policy: Arc::clone(&denied.name),
        limit: None,
        wait: Duration::ZERO,
        dry_run_refused: false,
    };
    let status = match denied.scope {
        ConcurrencyScope::PerKey => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    config.refusal(&decision, status)
}

fn internal(err: &Error) -> Response<Full<Bytes>> {
    tracing::error!(error = %err, "rate limit check failed");
    plain_error(StatusCode::INTERNAL_SERVER_ERROR, "rate_limit_error", None)
}
