//! Decisions: what a check concluded, with everything a response needs.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::StatusCode;

use crate::algorithm::Snapshot;
use crate::quota::Quota;

/// Why a check ended as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Within every limit.
    Allowed,
    /// The key is on the policy's allow-list: no limit applied.
    AllowListed,
    /// Over a limit.
    RateLimited,
    /// Under a penalty block after an earlier violation.
    Blocked,
    /// The key is on the policy's deny-list.
    DenyListed,
    /// The key could not be determined and the limit's rule is to refuse.
    KeyMissing,
    /// The store failed and the policy fails closed.
    StoreUnavailable,
    /// The store failed and the policy fails open: allowed without counting.
    StoreUnavailableFailedOpen,
    /// The in-memory store's key table is full of active keys and could not track this new key
    /// ([`OnFull::Deny`](crate::OnFull::Deny)): the server is at its limit, not the client
    /// (status 503). Many of these mean a flood of distinct keys, or a `max_keys` set too low.
    KeyTableFull,
}

impl Reason {
    /// A short machine-readable name (`rate_limited`, `blocked`, ...), used in bodies and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::AllowListed => "allow_listed",
            Reason::RateLimited => "rate_limited",
            Reason::Blocked => "blocked",
            Reason::DenyListed => "denied",
            Reason::KeyMissing => "key_missing",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::StoreUnavailableFailedOpen => "store_unavailable_failed_open",
            Reason::KeyTableFull => "key_table_full",
        }
    }

    /// The reasons there are.
    pub(crate) const COUNT: usize = 9;

    /// Its place among [`Reason::COUNT`], for tables with a slot per reason (the stats
    /// counters, the metrics handles).
    #[inline(always)]
    pub(crate) const fn index(self) -> usize {
        match self {
            Reason::Allowed => 0,
            Reason::AllowListed => 1,
            Reason::RateLimited => 2,
            Reason::Blocked => 3,
            Reason::DenyListed => 4,
            Reason::KeyMissing => 5,
            Reason::StoreUnavailable => 6,
            Reason::StoreUnavailableFailedOpen => 7,
            Reason::KeyTableFull => 8,
        }
    }
}

/// The standing of the limit a decision reports (the one that refused, or the one with the
/// least headroom left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitState {
    /// The limit's name.
    pub name: &'static str,
    /// The quota applied to this key.
    pub quota: Quota,
    /// The standing after the check.
    pub snapshot: Snapshot,
}

/// What the rate-limit headers of a response show of a [`Decision`]: the binding limit's name,
/// quota and standing. Small and `Copy`, so that a middleware can keep it from the check until the
/// response's headers are written ([`Decision::limit_headers`], [`HeaderOptions::render_limit`](crate::HeaderOptions::render_limit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitHeaders {
    /// The limit's name.
    pub name: &'static str,
    /// The quota applied to this key.
    pub quota: Quota,
    /// The capacity: the burst for GCRA, the amount for window algorithms.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// How long until the key is back to full capacity.
    pub reset_after: Duration,
}

impl LimitHeaders {
    /// The header numbers of limit `name`'s standing `snapshot` under `quota`.
    #[inline]
    pub(crate) fn of(name: &'static str, quota: Quota, snapshot: &Snapshot) -> Self {
        LimitHeaders {
            name,
            quota,
            limit: snapshot.limit,
            remaining: snapshot.remaining,
            reset_after: snapshot.reset_after,
        }
    }
}

/// What a check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on (after [`Decision::wait`]).
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The policy's name.
    pub policy: &'static str,
    /// The binding limit, when one applied.
    pub limit: Option<LimitState>,
    /// How long to wait before going on (the delay action). Zero for most decisions.
    pub wait: Duration,
    /// Set in dry-run mode when the decision would have refused: it was allowed and nothing was
    /// consumed.
    pub dry_run_refused: bool,
}

impl Decision {
    /// How long until a retry could pass, in whole seconds rounded up: at least 1 on a refusal,
    /// 0 when allowed.
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            return 0;
        }
        let d = self.limit.as_ref().map_or(Duration::from_secs(1), |l| l.snapshot.retry_after);
        ceil_secs(d).max(1)
    }

    /// What the rate-limit headers show of this decision; `None` when no limit applied.
    #[inline]
    pub fn limit_headers(&self) -> Option<LimitHeaders> {
        self.limit.as_ref().map(|l| LimitHeaders::of(l.name, l.quota, &l.snapshot))
    }

    /// The status of a refusal: 503 when the store is unavailable or its key table full, 403 for a
    /// deny-listed key, 400 for a missing key, 429 otherwise; 200 when allowed.
    pub fn status(&self) -> StatusCode {
        if self.allowed {
            return StatusCode::OK;
        }
        match self.reason {
            Reason::StoreUnavailable | Reason::KeyTableFull => StatusCode::SERVICE_UNAVAILABLE,
            Reason::DenyListed => StatusCode::FORBIDDEN,
            Reason::KeyMissing => StatusCode::BAD_REQUEST,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// What an allowed request takes from its decision to its response: how long to wait first and
/// the numbers of its rate-limit headers. Small and `Copy`, so that a middleware can carry it with
/// the response future on every request ([`Admission`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admitted {
    /// How long to wait before going on (the delay action). Usually zero.
    pub wait: Duration,
    /// The binding limit's header numbers; `None` when no limit applied or they were not asked for.
    pub headers: Option<LimitHeaders>,
}

/// A check's answer as a middleware's hot path wants it ([`Policy::try_admit_now`],
/// [`Policy::admit`]): the little an allowed request needs, or what the caller made of a refused
/// request's [`Decision`] (its refusal response, say). The allow path then moves a few words
/// rather than a whole decision, and the refusal path builds its answer from the decision
/// where it is.
///
/// [`Policy::try_admit_now`]: crate::Policy::try_admit_now
/// [`Policy::admit`]: crate::Policy::admit
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission<R> {
    /// The request may go on: allowed, allow-listed, failed open, or refused in dry-run mode.
    Admitted(Admitted),
    /// The request is refused: the caller's answer, made from the decision.
    Refused(R),
}

impl<R> Admission<R> {
    /// The admission of `decision`, with its limit's header numbers when `with_headers`, or
    /// `refuse(decision)` when it refuses.
    #[inline]
    pub fn of(decision: Decision, with_headers: bool, refuse: impl FnOnce(Decision) -> R) -> Self {
        if decision.allowed {
            let headers = if with_headers { decision.limit_headers() } else { None };
            Admission::Admitted(Admitted { wait: decision.wait, headers })
        } else {
            Admission::Refused(refuse(decision))
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The one `&'static` copy of a policy, limit or limiter name. Decisions carry names on every
/// request, and many threads copying one `Arc<str>` would contend on its reference count; names
/// are few (they come from code or configuration), so each distinct one is kept for the life of
/// the process.
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into());
    names.insert(leaked);
    leaked
}
