//! A policy's part of a [stats snapshot](crate::stats): read from the counts its decisions keep.

use super::{FailureMode, KeyKind, Policy, RequestKeys};
use crate::decision::Decision;
use crate::key::Key;
use crate::stats::{LimitReasons, LimitStats, PolicyStats, Reasons, TopKey};
use crate::store::Store;

impl<S: Store> Policy<S> {
    /// What this policy decided so far, by reason and by limit, with its store's health; its
    /// `routes` empty and its rates unset (an [`Engine`](crate::engine::Engine)'s snapshot fills
    /// in the routes, a [`Sampler`](crate::stats::Sampler) the rates). Cheap: a few dozen loads,
    /// plus what the store's [`Store::health`] and [`Store::tracked_keys`] cost.
    ///
    /// ```
    /// use tollgate::{KeyKind, Limit, Policy, RequestKeys};
    ///
    /// let policy = Policy::builder("api").limit(Limit::new("per_ip", "1/min".parse()?).key(KeyKind::ip())).build()?;
    /// let keys = RequestKeys { ip: Some("192.0.2.1".parse()?), ..RequestKeys::default() };
    /// for _ in 0..3 {
    ///     policy.try_check_now(&keys, 1).unwrap()?;
    /// }
    /// let stats = policy.stats();
    /// assert_eq!((stats.allowed, stats.refused, stats.reasons.rate_limited), (1, 2, 2));
    /// assert_eq!((stats.limits[0].refused, stats.limits[0].tracked_keys), (2, Some(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> PolicyStats {
        let inner = &*self.inner;
        let c = inner.metrics.counts.read();
        let reasons = Reasons {
            allowed: c.allowed,
            allow_listed: c.allow_listed,
            store_unavailable_failed_open: c.failed_open,
            rate_limited: c.rate_limited,
            blocked: c.blocked,
            denied: c.denied,
            key_missing: c.key_missing,
            store_unavailable: c.store_unavailable,
            key_table_full: c.key_table_full,
        };
        let limits = inner
            .limits
            .iter()
            .enumerate()
            .map(|(i, pl)| {
                let [rate_limited, blocked, key_table_full] = inner.metrics.refusals.of_limit(i);
                LimitStats {
                    name: pl.limit.name.to_owned(),
                    quota: pl.limit.quota.to_string(),
                    key: key_label(&pl.limit.key),
                    algorithm: pl.limit.algorithm.name(),
                    refused: rate_limited + blocked + key_table_full,
                    reasons: LimitReasons { rate_limited, blocked, key_table_full },
                    refused_per_second: None,
                    tracked_keys: inner.store.tracked_keys(&pl.handle),
                }
            })
            .collect();
        PolicyStats {
            name: inner.name.to_owned(),
            routes: Vec::new(),
            failure_mode: match inner.failure {
                FailureMode::Open => "open",
                FailureMode::Closed => "closed",
                FailureMode::Fallback => "fallback",
            },
            dry_run: inner.dry_run,
            allowed: reasons.allowed(),
            delayed: c.delayed,
            refused: reasons.refused(),
            reasons,
            store_failures: c.store_failures,
            per_second: None,
            limits,
            store: inner.store.health(),
        }
    }

    /// Whether `other` is this policy (a clone of it), not merely alike.
    pub(crate) fn is_same_as(&self, other: &Policy<S>) -> bool {
        std::sync::Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The keys this policy refused most (see [`Refusals::top`](crate::stats::counters::Refusals::top)).
    pub(crate) fn top_refused(&self) -> Vec<TopKey> {
        let inner = &*self.inner;
        inner
            .metrics
            .refusals
            .top()
            .into_iter()
            .map(|(id, count, error)| TopKey {
                key: id.display(),
                policy: inner.name.to_owned(),
                limit: id.limit().and_then(|i| inner.limits.get(i)).map(|pl| pl.limit.name.to_owned()),
                reason: id.reason,
                count,
                error,
                per_second: None,
            })
            .collect()
    }

    /// Counts the refusal `decision` of `request` against its limit and its key: the key the
    /// refusing limit counts by, else (a refusal no limit made: a deny-list, a missing key, a
    /// store failing closed) the client's address, else the key of the policy's first limit
    /// that has one. Out of the allow path.
    #[cold]
    pub(super) fn count_refusal(&self, decision: &Decision, request: &RequestKeys<'_>) {
        let inner = &*self.inner;
        let limit = decision.limit.as_ref().and_then(|l| inner.limits.iter().position(|pl| pl.limit.name == l.name));
        let key = match limit {
            Some(i) => inner.limits[i].limit.key.resolve(request).unwrap_or(Key::Text(MISSING)),
            None => request
                .ip
                .map(Key::Ip)
                .or_else(|| inner.limits.iter().find_map(|pl| pl.limit.key.resolve(request)))
                .unwrap_or(Key::Text(MISSING)),
        };
        inner.metrics.refusals.refused(limit, decision.reason, key);
    }
}

/// The key shown for a request without one.
const MISSING: &str = "(no key)";

/// What a limit counts by, as the configuration names it.
fn key_label(key: &KeyKind) -> String {
    match key {
        KeyKind::Global => "global".into(),
        KeyKind::Ip { .. } => "ip".into(),
        KeyKind::Identity { .. } => "identity".into(),
        KeyKind::Header(name) => format!("header:{name}"),
        KeyKind::Route => "route".into(),
        KeyKind::Custom => "custom".into(),
    }
}
