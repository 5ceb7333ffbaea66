//! What the engine answers: admit the request ([`Admit`]) or refuse it ([`Refusal`]).

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};

use super::body::BodyCharge;
use crate::concurrency::ConnectionLease;
use crate::concurrency::adaptive::{LatencySample, Outcome};
use crate::decision::{Admitted, Decision, LimitHeaders};
use crate::headers::{HeaderOptions, HeaderSink};
use crate::websocket::UpgradeLease;

/// An admitted request's plan: wait [`Admit::wait`], count the body against
/// [`Admit::max_body`] while it streams (charging [`Admit::body_bytes`]), then call the
/// application and finish its response with [`Admit::response`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Admit {
    /// How long to wait before calling the application (the delay action). Usually zero.
    pub wait: Duration,
    /// The largest body the route takes: a body that turns out longer while it streams is cut
    /// off with an error the application answers with 413. `None`: any length.
    pub max_body: Option<u64>,
    /// The route's body-bytes charge still to make, for an adapter that counts the body while
    /// it streams ([`RequestView::counts_body`](crate::request::RequestView::counts_body)) when
    /// the body's length was unknown: charge each part as the application reads it. `None`:
    /// nothing to charge while it streams (no body-bytes limit, or the length was charged).
    pub body_bytes: Option<BodyCharge>,
    /// What the response needs: its rate-limit headers and the leases the request holds.
    pub response: ResponsePlan,
}

/// What an admitted request's response needs from the checks: the rate-limit header fields, and
/// the concurrency leases the request holds — the in-flight lease, which the response body keeps
/// until it is finished or dropped, and a WebSocket connection's [`UpgradeLease`]. Kept small,
/// as adapters move it with their response future on every request: what the headers show
/// rather than the whole [`Decision`], the leases boxed, as only routes with concurrency limits
/// have them.
#[derive(Debug, Default)]
pub struct ResponsePlan {
    shown: Shown,
    leases: Option<Box<Leases>>,
}

impl ResponsePlan {
    /// What the response needs from the policies' admission (none: no policy applied) and the
    /// leases taken, with how long to wait before calling the application.
    #[inline]
    pub(crate) fn new(
        headers: HeaderOptions,
        allowed: Option<Admitted>,
        leases: Option<Box<Leases>>,
    ) -> (Self, Duration) {
        let Admitted { wait, headers: limit, .. } = allowed.unwrap_or_default();
        (ResponsePlan { shown: Shown::of(headers, limit), leases }, wait)
    }

    /// The WebSocket connection's lease, when the route takes one: put it where the upgrade
    /// handler finds it (a clone; the lease itself is taken once).
    #[inline]
    pub fn upgrade(&self) -> Option<&UpgradeLease> {
        self.leases.as_ref().and_then(|l| l.upgrade.as_ref())
    }

    /// Finishes the response of status `status`: writes the rate-limit headers into `headers`,
    /// records the response's latency and outcome (a 5xx fails) under the route's adaptive
    /// limits, releases a WebSocket lease the handler did not take (with a warning when the
    /// upgrade succeeded: the connection is then not counted), and returns the in-flight lease,
    /// for the response body to hold until it is finished or dropped.
    ///
    /// `headers` is the response's `http` 1.x map, or any [`HeaderSink`] (an adapter's own map).
    #[inline(always)]
    pub fn apply(self, status: StatusCode, headers: &mut (impl HeaderSink + ?Sized)) -> Option<ConnectionLease> {
        self.shown.render(headers);
        match self.leases {
            None => None,
            Some(leases) => leases.hand_over(status),
        }
    }

    /// The application gave no response: its service returned an error, which the framework
    /// turns into an answer of `status` (a tower or warp error: 500; actix-web's errors carry
    /// their own). The request counts under the route's adaptive limits as a response of that
    /// status would (a 5xx fails, a 401 does not), and its leases are given back.
    #[cold]
    pub fn failed(self, status: StatusCode) {
        if let Some(leases) = self.leases {
            drop(leases.hand_over(status));
        }
    }
}

/// What an allowed response's rate-limit headers show, kept from the check: as little as the
/// header styles need.
#[derive(Debug, Default)]
enum Shown {
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
    fn render(self, into: &mut (impl HeaderSink + ?Sized)) {
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
/// over, and a WebSocket connection lease, which the upgraded socket takes over — with the
/// latency sample of the connection's adaptive limit, which ends with the upgrade's response (the
/// in-flight lease carries its own).
#[derive(Debug)]
pub(crate) struct Leases {
    pub(crate) lease: Option<ConnectionLease>,
    pub(crate) upgrade: Option<UpgradeLease>,
    pub(crate) upgrade_sample: Option<LatencySample>,
}

impl Leases {
    #[inline]
    pub(crate) fn boxed(
        lease: Option<ConnectionLease>,
        upgrade: Option<(UpgradeLease, Option<LatencySample>)>,
    ) -> Option<Box<Self>> {
        let (upgrade, upgrade_sample) = upgrade.map_or((None, None), |(u, s)| (Some(u), s));
        (lease.is_some() || upgrade.is_some()).then(|| Box::new(Leases { lease, upgrade, upgrade_sample }))
    }

    /// The application is called `wait` after the leases were taken (the delay action):
    /// latencies count from then.
    pub(crate) fn delayed(&mut self, wait: Duration) {
        if let Some(sample) = self.lease.as_mut().and_then(ConnectionLease::sample_mut) {
            sample.delayed(wait);
        }
        if let Some(sample) = &mut self.upgrade_sample {
            sample.delayed(wait);
        }
    }

    /// The in-flight lease for the response body; warns when an upgrade's lease was not taken.
    /// An upgraded connection (101) is no request in flight: its in-flight place is given back at
    /// once (the WebSocket lease counts the connection from then on), whatever its framework
    /// makes of the upgraded response's body.
    fn hand_over(self, status: StatusCode) -> Option<ConnectionLease> {
        let Leases { mut lease, upgrade, upgrade_sample } = self;
        let outcome = Outcome::of(status);
        if let Some(lease) = &mut lease {
            lease.record(outcome);
        }
        if let Some(sample) = upgrade_sample {
            sample.record(outcome);
        }
        let lease = lease.filter(|_| status != StatusCode::SWITCHING_PROTOCOLS);
        if let Some(upgrade) = &upgrade
            && upgrade.release_untaken()
            && status == StatusCode::SWITCHING_PROTOCOLS
        {
            tracing::warn!(
                "a WebSocket upgrade succeeded but its handler did not take the connection lease \
                 (take it from the `UpgradeLease`, e.g. with the adapter's upgrade extractor); the \
                 connection is not counted"
            );
        }
        lease
    }
}

/// A refused request's answer: its status, and the header fields and body the core renders for
/// it ([`Refusal::render_into`], or [`Refusal::render`]). The adapter sends it and does not call
/// the application. Rendered where the adapter builds its response, so that the header fields
/// are written once, into the response's own map.
///
/// ```
/// use http::StatusCode;
/// use tollgate::HeaderOptions;
/// use tollgate::engine::Refusal;
///
/// let refusal = Refusal::error(&HeaderOptions::default(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(65536));
/// assert_eq!(refusal.status(), 413);
/// let (headers, body) = refusal.render();
/// assert_eq!(headers["content-type"], "application/json");
/// assert_eq!(&body[..], br#"{"error":"payload_too_large","limit":65536}"#);
/// ```
#[derive(Clone, Debug)]
pub struct Refusal {
    status: StatusCode,
    options: HeaderOptions,
    cause: Cause,
}

#[derive(Clone, Debug)]
enum Cause {
    /// A limit refused: `Retry-After`, the rate-limit headers and the refusal body.
    Decision(Decision),
    /// No decision (411, 413, 500): the error body alone.
    Error { error: &'static str, limit: Option<u64> },
}

impl Refusal {
    /// The refusal of `decision` with status `status`, rendered in the `options` style.
    pub fn of(options: &HeaderOptions, decision: Decision, status: StatusCode) -> Self {
        Refusal { status, options: *options, cause: Cause::Decision(decision) }
    }

    /// An answer without a decision (411, 413, 500), in the `options` body format: `error` is a
    /// short machine-readable name, `limit` the limit exceeded when there is one (see
    /// [`HeaderOptions::error_body`]).
    pub fn error(options: &HeaderOptions, status: StatusCode, error: &'static str, limit: Option<u64>) -> Self {
        Refusal { status, options: *options, cause: Cause::Error { error, limit } }
    }

    /// The 413 of a body that turned out longer than the route's largest body (`max` bytes)
    /// while it streamed, where no length was declared: the same answer as for a declared length
    /// over it, for an adapter that replaces the application's response to a cut-off body.
    pub fn body_too_large(options: &HeaderOptions, max: u64) -> Self {
        Self::error(options, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some(max))
    }

    /// The 500 of a WebSocket upgrade whose route has no WebSocket limits (the handler asked for
    /// the connection's lease, but no middleware applied the engine, or the route's limits have no
    /// WebSocket part): `{"error":"websocket_limits_missing"}`, the same on every adapter.
    pub fn websocket_limits_missing(options: &HeaderOptions) -> Self {
        Self::error(options, StatusCode::INTERNAL_SERVER_ERROR, "websocket_limits_missing", None)
    }

    /// 429 over a rate, 413 for a body over its largest size, 411 when a body-bytes limit cannot
    /// tell a body's cost, 503 when a global cap is full or a store failed closed, 403 for a
    /// deny-listed key, 400 for a missing key, 500 when a check failed.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The decision refused, for a refusal by a limit (not for 411, 413 or 500): what an
    /// adapter's custom-refusal hook gets.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.cause {
            Cause::Decision(decision) => Some(decision),
            Cause::Error { .. } => None,
        }
    }

    /// Writes the header fields (`Content-Type`, `Retry-After`, the rate-limit headers) into
    /// `headers` — the response's `http` 1.x map, or any [`HeaderSink`] — and returns the body,
    /// JSON or problem+json.
    pub fn render_into(&self, headers: &mut (impl HeaderSink + ?Sized)) -> Bytes {
        match &self.cause {
            Cause::Decision(decision) => Bytes::from(self.options.refusal(decision, headers)),
            Cause::Error { error, limit } => {
                let (content_type, body) = self.options.error_body(self.status, error, *limit);
                headers.set(CONTENT_TYPE, content_type);
                Bytes::from(body)
            }
        }
    }

    /// The header fields and the body, for an adapter whose header types are not `http` 1.x's:
    /// it converts each field's name and value bytes (`HeaderMap` iterates them).
    pub fn render(&self) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        let body = self.render_into(&mut headers);
        (headers, body)
    }
}
