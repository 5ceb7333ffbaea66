//! The middleware service.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body::Body;
use http_body_util::Full;
use tollgate::{
    Admission, Admitted, ConcurrencyLimiter, ConnectionLease, Decision, Error, HeaderOptions, Key, KeyKind,
    LimitHeaders, MemoryStore, Policy, RequestKeys, Store, StoreError,
};
use tower::Service;

use super::bodies::{RequestBodies, ResponseBodies, Wrapped};
use super::future::{BoxPrepare, ResponseFuture};
use super::layer::{Config, Limits, WebSocketLimits};
use crate::websocket::UpgradeLease;

/// The middleware: see the [module docs](crate::rate_limit). `M` says how bodies are passed on
/// ([`Bodies`](super::Bodies)).
pub struct RateLimit<S, St: Store = MemoryStore, M = Wrapped> {
    inner: S,
    config: Arc<Config<St>>,
    bodies: PhantomData<fn() -> M>,
}

impl<S: Clone, St: Store, M> Clone for RateLimit<S, St, M> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: Arc::clone(&self.config), bodies: PhantomData }
    }
}

impl<S: fmt::Debug, St: Store, M> fmt::Debug for RateLimit<S, St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, St: Store, M> RateLimit<S, St, M> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config, bodies: PhantomData }
    }

    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &super::RateLimitLayer<St, M>) -> Self {
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
    Go { request: Request<B>, extra: Extra, wait: Duration },
    Refuse(Response<Full<Bytes>>),
}

/// What the response needs from the checks. Kept small (it is moved with the response future on
/// every request, and each byte of the future costs about an instruction per request): what the
/// headers show rather than the whole [`Decision`], the leases boxed, as only routes with
/// concurrency limits have them.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) shown: Shown,
    pub(crate) leases: Option<Box<Leases>>,
}

impl Extra {
    /// What the response needs from the policies' admission (none: no policy applied) and the
    /// leases taken, with how long to wait before calling the inner service.
    #[inline]
    fn new(headers: HeaderOptions, allowed: Option<Admitted>, leases: Option<Box<Leases>>) -> (Self, Duration) {
        let Admitted { wait, headers: limit, .. } = allowed.unwrap_or_default();
        (Extra { shown: Shown::of(headers, limit), leases }, wait)
    }
}

/// What an allowed response's rate-limit headers show, kept from the check: as little as the
/// header styles need.
#[derive(Default)]
pub(crate) enum Shown {
    /// No headers: no limit applied, or no style is on.
    #[default]
    Nothing,
    /// The X-RateLimit style alone (the default): its three numbers. A quota's amount and burst
    /// are `u32`, so the capacity and what remains fit one; the reset is in nanoseconds.
    Numbers { headers: HeaderOptions, limit: u32, remaining: u32, reset_after: u64 },
    /// A style that shows the limit's name and quota too: boxed, as those styles are opt-in.
    All(Box<(HeaderOptions, LimitHeaders)>),
}

impl Shown {
    #[inline]
    fn of(headers: HeaderOptions, limit: Option<LimitHeaders>) -> Self {
        let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        match limit {
            None => Shown::Nothing,
            Some(limit) if headers.needs_name_and_quota() => Shown::All(Box::new((headers, limit))),
            Some(limit) => Shown::Numbers {
                headers,
                limit: narrow(limit.limit),
                remaining: narrow(limit.remaining),
                reset_after: u64::try_from(limit.reset_after.as_nanos()).unwrap_or(u64::MAX),
            },
        }
    }

    /// Writes the headers into a response's.
    #[inline]
    pub(crate) fn render(self, into: &mut HeaderMap) {
        match self {
            Shown::Nothing => {}
            Shown::Numbers { headers, limit, remaining, reset_after } => {
                headers.render_numbers(limit.into(), remaining.into(), Duration::from_nanos(reset_after), into);
            }
            Shown::All(all) => all.0.render_limit(&all.1, into),
        }
    }
}

/// The concurrency leases a request holds: the in-flight lease, which the response body takes
/// over, and a WebSocket connection lease, which the upgraded socket takes over.
pub(crate) struct Leases {
    pub(crate) lease: Option<ConnectionLease>,
    pub(crate) upgrade: Option<UpgradeLease>,
}

impl Leases {
    #[inline]
    fn boxed(lease: Option<ConnectionLease>, upgrade: Option<UpgradeLease>) -> Option<Box<Self>> {
        (lease.is_some() || upgrade.is_some()).then(|| Box::new(Leases { lease, upgrade }))
    }

    #[inline]
    fn upgrade(leases: &Option<Box<Self>>) -> Option<&UpgradeLease> {
        leases.as_ref().and_then(|l| l.upgrade.as_ref())
    }
}

impl<S, St, M, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, M>
where
    S: Service<Request<M::Request>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    St: Store,
    M: RequestBodies<ReqBody> + ResponseBodies<ResBody>,
    M::Request: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<<M as ResponseBodies<ResBody>>::Response>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // Always inlined: a caller that stores the future (hyper's connection, a `Oneshot`) then gets
    // it written in place, where a call returns it through a temporary: one copy of the inner
    // future fewer (about 130 instructions per request around an axum `Router`, measured).
    #[inline(always)]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let limits = self.config.limits_for(&request);
        if !limits.at_once {
            // A store with I/O: check asynchronously, then call the inner service.
            let config = Arc::clone(&self.config);
            let prep: BoxPrepare<M::Request> = Box::pin(async move {
                match prepare::<St, M, ReqBody>(&config, request).await {
                    Prepared::Go { request, extra, wait } => {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        Prepared::Go { request, extra, wait: Duration::ZERO }
                    }
                    refused => refused,
                }
            });
            return ResponseFuture::preparing(prep, self.take_ready_inner());
        }
        // The stores decide at once: check inside `call`, with nothing boxed.
        let (extra, wait) = match check_now::<St, M, ReqBody>(&self.config, limits, &request) {
            Ok(checked) => checked,
            Err(refusal) => return ResponseFuture::refused(*refusal),
        };
        if let Some(upgrade) = Leases::upgrade(&extra.leases) {
            request.extensions_mut().insert(upgrade.clone());
        }
        let request = M::pass_on(request, limits.max_body);
        if wait.is_zero() {
            return ResponseFuture::inner(self.inner.call(request), extra);
        }
        let prep: BoxPrepare<M::Request> = Box::pin(async move {
            tokio::time::sleep(wait).await;
            Prepared::Go { request, extra, wait: Duration::ZERO }
        });
        ResponseFuture::preparing(prep, self.take_ready_inner())
    }
}

impl<S: Clone, St: Store, M> RateLimit<S, St, M> {
    /// The service made ready by `poll_ready`, leaving a clone in its place (tower's rule: the
    /// ready one must serve this request).
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// Every check of the request's limits, in order — body size (its 413 or 411 spends nothing),
/// request policy, body bytes, concurrency leases — on stores that decide at once: what the
/// response needs, and how long to wait before calling the inner service. Inlined into `call`,
/// where the allow path then moves nothing through a returned `Result` (about 70 instructions
/// per request, measured).
#[inline(always)]
fn check_now<St: Store, M: RequestBodies<B>, B>(
    config: &Config<St>,
    limits: &Limits<St>,
    request: &Request<B>,
) -> Result<(Extra, Duration), Refusal> {
    let route = |ext| config.route(ext, request.uri().path());
    let keys = config.keys.keys_for(request, limits.fields(&config.lease_key), route);
    let refuse = |decision: Decision| refusal(config, &decision);
    let headers = config.headers.writes_limit();
    // The body's size first: a 413 or 411 from it spends nothing.
    let body = body_cost(config, limits, request.headers(), request.version(), || M::exact_len(request.body()))?;
    let mut allowed = None;
    if let Some(policy) = &limits.policy {
        allowed = Some(verdict(config, policy.try_admit_now(&keys, 1, headers, refuse))?);
    }
    if let Some((policy, cost)) = body {
        let bytes = bytes_verdict(config, policy.try_admit_now(&keys, cost, headers, refuse))?;
        allowed = Some(both(allowed, bytes));
    }
    let leases = leases(config, limits, &keys)?;
    Ok(Extra::new(config.headers, allowed, leases))
}

/// [`check_now`] for stores with I/O.
async fn prepare<St: Store, M: RequestBodies<B>, B>(config: &Config<St>, request: Request<B>) -> Prepared<M::Request> {
    let limits: &Limits<St> = config.limits_for(&request);
    // Only the parts are borrowed across the awaits: the body need not be `Sync`.
    let (mut parts, body) = request.into_parts();
    let exact = M::exact_len(&body);
    let checked = async {
        let route = |ext| config.route(ext, parts.uri.path());
        let keys = config.keys.keys_of_parts_for(&parts, limits.fields(&config.lease_key), route);
        let refuse = |decision: Decision| refusal(config, &decision);
        let headers = config.headers.writes_limit();
        let body = body_cost(config, limits, &parts.headers, parts.version, || exact)?;
        let mut allowed = None;
        if let Some(policy) = &limits.policy {
            allowed = Some(verdict(config, Some(policy.admit(&keys, 1, headers, refuse).await))?);
        }
        if let Some((policy, cost)) = body {
            let bytes = bytes_verdict(config, Some(policy.admit(&keys, cost, headers, refuse).await))?;
            allowed = Some(both(allowed, bytes));
        }
        let leases = acquire_leases(config, limits, &keys).await?;
        Ok::<_, Refusal>(Extra::new(config.headers, allowed, leases))
    };
    match checked.await {
        Ok((extra, wait)) => {
            if let Some(upgrade) = Leases::upgrade(&extra.leases) {
                parts.extensions.insert(upgrade.clone());
            }
            Prepared::Go { request: Request::from_parts(parts, M::request(body, limits.max_body)), extra, wait }
        }
        Err(refusal) => Prepared::Refuse(*refusal),
    }
}

/// The request policy's and the body-bytes policy's admissions together: the headers of the
/// request policy when there is one, and the longer wait.
fn both(request: Option<Admitted>, bytes: Admitted) -> Admitted {
    match request {
        Some(mut r) => {
            r.wait = r.wait.max(bytes.wait);
            r
        }
        None => bytes,
    }
}

/// A refusal on its way out of the checks, boxed so that the allow path moves a small `Result`.
type Refusal = Box<Response<Full<Bytes>>>;

/// A policy's answer on the way to the response: what an admitted request leaves for it, or the
/// refusal.
type Answer = Option<Result<Admission<Refusal>, Error>>;

/// What an admitted request leaves for the response, or its refusal. `None` is a store that said
/// it decides at once and then did not: a broken `Store` implementation.
#[inline(always)]
fn verdict<St: Store>(config: &Config<St>, answer: Answer) -> Result<Admitted, Refusal> {
    match answer {
        Some(Ok(Admission::Admitted(admitted))) => Ok(admitted),
        Some(Ok(Admission::Refused(refusal))) => Err(refusal),
        Some(Err(err)) => Err(failure(config, &err)),
        None => Err(stopped(config)),
    }
}

/// The refusal of a refused decision, out of the allow path.
#[inline(never)]
fn refusal<St: Store>(config: &Config<St>, decision: &Decision) -> Refusal {
    Box::new(config.refusal(decision, decision.status()))
}

/// The answer when the store stopped deciding at once.
#[cold]
fn stopped<St: Store>(config: &Config<St>) -> Refusal {
    failure(config, &Error::Store(StoreError::Protocol("the store stopped deciding at once".into())))
}

/// The answer to a check that failed, out of the allow path.
#[inline(never)]
fn failure<St: Store>(config: &Config<St>, err: &Error) -> Refusal {
    Box::new(internal(config, err))
}

/// [`verdict`] for the body-bytes policy (413 for a body larger than the byte limit can ever
/// admit at once).
fn bytes_verdict<St: Store>(config: &Config<St>, answer: Answer) -> Result<Admitted, Refusal> {
    match answer {
        Some(Err(Error::InvalidCost { capacity, .. })) => {
            Err(Box::new(config.error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(capacity))))
        }
        other => verdict(config, other),
    }
}

/// The route's body checks: nothing for a route without body limits (decided inline), else
/// [`body_limits`].
#[inline(always)]
fn body_cost<'l, St: Store>(
    config: &Config<St>,
    limits: &'l Limits<St>,
    headers: &HeaderMap,
    version: Version,
    exact: impl FnOnce() -> Option<u64>,
) -> Result<Option<(&'l Policy<St>, u32)>, Refusal> {
    if limits.max_body.is_none() && limits.body_bytes.is_none() {
        return Ok(None);
    }
    body_limits(config, limits, headers, version, exact)
}

/// 413 from the body's length over the route's largest body; else the body-bytes policy and the
/// body's cost when the route has one (411 when the length is unknown and there is no largest
/// body to charge). The length is the `Content-Length`; else what the body says of itself
/// (`exact`, its exact size hint, where the body type is known: with
/// [`AxumBody`](super::AxumBody)); else 0 for an HTTP/1 request without `Transfer-Encoding`,
/// which has no body (RFC 9112 §6.3: most GETs).
fn body_limits<'l, St: Store>(
    config: &Config<St>,
    limits: &'l Limits<St>,
    headers: &HeaderMap,
    version: Version,
    exact: impl FnOnce() -> Option<u64>,
) -> Result<Option<(&'l Policy<St>, u32)>, Refusal> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let http1_without_body = matches!(version, Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11)
        && !headers.contains_key(header::TRANSFER_ENCODING);
    let length = declared.or_else(exact).or(http1_without_body.then_some(0));
    if let (Some(max), Some(len)) = (limits.max_body, length)
        && len > max
    {
        return Err(Box::new(config.error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(max))));
    }
    let Some(policy) = &limits.body_bytes else { return Ok(None) };
    let Some(cost) = length.or(limits.max_body) else {
        return Err(Box::new(config.error(StatusCode::LENGTH_REQUIRED, "length_required", None)));
    };
    Ok((cost > 0).then(|| (policy, u32::try_from(cost).unwrap_or(u32::MAX))))
}

/// The limiters a route's leases come from, each with the key it counts by
/// ([`Limits::lease_keys`]).
type LeasePlan<'l, 'k> = (Option<(&'l ConcurrencyLimiter, Key<'k>)>, Option<(&'l WebSocketLimits, Key<'k>)>);

fn lease_plan<'l, 'k, St: Store>(
    config: &'l Config<St>,
    limits: &'l Limits<St>,
    keys: &RequestKeys<'k>,
) -> LeasePlan<'l, 'k> {
    let (in_flight_key, websocket_key) = limits.lease_keys(&config.lease_key);
    let in_flight =
        limits.in_flight.as_ref().zip(in_flight_key).map(|(limiter, kind)| (limiter, lease_key(kind, keys)));
    let websocket = limits.websocket.as_ref().zip(websocket_key).map(|(ws, kind)| (ws, lease_key(kind, keys)));
    (in_flight, websocket)
}

/// The in-flight lease and the WebSocket connection lease the route asks for (see
/// [`lease_plan`]), on limiters that count in this process; a route without concurrency limits is
/// decided inline.
#[inline(always)]
fn leases<St: Store>(
    config: &Config<St>,
    limits: &Limits<St>,
    keys: &RequestKeys<'_>,
) -> Result<Option<Box<Leases>>, Refusal> {
    if !limits.takes_leases() {
        return Ok(None);
    }
    take_leases(config, limits, keys)
}

fn take_leases<St: Store>(
    config: &Config<St>,
    limits: &Limits<St>,
    keys: &RequestKeys<'_>,
) -> Result<Option<Box<Leases>>, Refusal> {
    let (in_flight, websocket) = lease_plan(config, limits, keys);
    let refuse = |denied| Box::new(concurrency_refusal(config, &denied));
    let lease = in_flight.map(|(limiter, key)| limiter.try_acquire(key)).transpose().map_err(refuse)?;
    let upgrade = match websocket {
        Some((ws, key)) => Some(upgrade_lease(ws, ws.connections.try_acquire(key).map_err(refuse)?, key)),
        None => None,
    };
    Ok(Leases::boxed(lease, upgrade))
}

/// [`leases`] for stores with I/O: the limiters may count in a shared lease store.
async fn acquire_leases<St: Store>(
    config: &Config<St>,
    limits: &Limits<St>,
    keys: &RequestKeys<'_>,
) -> Result<Option<Box<Leases>>, Refusal> {
    if !limits.takes_leases() {
        return Ok(None);
    }
    let (in_flight, websocket) = lease_plan(config, limits, keys);
    let refuse = |denied| Box::new(concurrency_refusal(config, &denied));
    let lease = match in_flight {
        Some((limiter, key)) => Some(limiter.acquire(key).await.map_err(refuse)?),
        None => None,
    };
    let upgrade = match websocket {
        Some((ws, key)) => Some(upgrade_lease(ws, ws.connections.acquire(key).await.map_err(refuse)?, key)),
        None => None,
    };
    Ok(Leases::boxed(lease, upgrade))
}

/// The upgraded socket's share of a WebSocket connection lease: the lease, the route's message
/// limits and the key its per-key message limits count by.
fn upgrade_lease(ws: &WebSocketLimits, lease: ConnectionLease, key: Key<'_>) -> UpgradeLease {
    UpgradeLease::new(lease, Arc::clone(&ws.messages), key.to_owned_key())
}

/// The key a lease of `kind` is counted by; requests without one share a key (as a policy's
/// `MissingKey::Shared`), so leaving it out cannot dodge the limit.
fn lease_key<'a>(kind: &KeyKind, keys: &RequestKeys<'a>) -> Key<'a> {
    kind.resolve(keys).unwrap_or(Key::Text("\u{0}missing"))
}

/// 429 when the key holds its maximum, 503 when the global cap is full or the shared lease store
/// failed closed; rendered by the core as a refusal (`Retry-After: 1`).
fn concurrency_refusal<St: Store>(config: &Config<St>, denied: &tollgate::ConcurrencyDenied) -> Response<Full<Bytes>> {
    config.refusal(&denied.decision(), denied.status())
}

fn internal<St: Store>(config: &Config<St>, err: &Error) -> Response<Full<Bytes>> {
    tracing::error!(error = %err, "rate limit check failed");
    config.error(StatusCode::INTERNAL_SERVER_ERROR, "rate_limit_error", None)
}
