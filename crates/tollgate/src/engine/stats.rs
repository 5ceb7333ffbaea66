//! The engine's [stats snapshot](crate::stats): its policies, leases and stores, each once.

use super::{Engine, Limits};
use crate::concurrency::{ConcurrencyDenied, ConcurrencyScope};
use crate::key::Key;
use crate::policy::Policy;
use crate::stats::{AdaptiveStats, LeaseStats, PolicyStats, Snapshot, TopKey};
use crate::store::Store;

impl<St: Store> Engine<St> {
    /// What the engine decided so far and holds now: every policy of every route once (request
    /// and body-bytes policies, with the routes they apply to), every concurrency limiter
    /// (in-flight requests and WebSocket connections: leases held, refused), the stores' health
    /// and the most refused keys. See the [`stats`](crate::stats) module for what it costs (next
    /// to nothing until asked) and the JSON it renders to; a
    /// [`Sampler`](crate::stats::Sampler) adds rates per second.
    ///
    /// ```
    /// use tollgate::engine::{Engine, Limits};
    /// use tollgate::{ConcurrencyLimiter, KeyKind, Limit, Policy};
    ///
    /// let api = Policy::builder("api").limit(Limit::new("per_ip", "10/s".parse()?).key(KeyKind::ip())).build()?;
    /// let engine = Engine::new(Limits::new())
    ///     .route("/api/{*rest}", Limits::new().policy(api.clone()).in_flight(ConcurrencyLimiter::new("api_in_flight").per_key(4)))
    ///     .route("/v2/{*rest}", Limits::new().policy(api));
    /// let stats = engine.stats();
    /// assert_eq!(stats.policies.len(), 1, "one policy, on two routes");
    /// assert_eq!(stats.policies[0].routes, ["/api/{*rest}", "/v2/{*rest}"]);
    /// assert_eq!((stats.leases[0].name.as_str(), stats.leases[0].kind, stats.leases[0].in_use), ("api_in_flight", "in_flight", 0));
    /// assert_eq!(stats.store.unwrap().kind, "memory");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Snapshot {
        let entries = std::iter::once(("(default)", &self.default))
            .chain(self.routes.iter().map(|r| (&*r.path, &r.limits)))
            .filter(|(_, limits)| has_limits(limits));
        let mut policies: Vec<(&Policy<St>, Vec<String>)> = Vec::new();
        let mut leases: Vec<LeaseStats> = Vec::new();
        for (route, limits) in entries {
            for policy in limits.policy.iter().chain(&limits.body_bytes) {
                match policies.iter_mut().find(|(p, _)| p.is_same_as(policy)) {
                    Some((_, routes)) if !routes.iter().any(|r| r == route) => routes.push(route.to_owned()),
                    Some(_) => {}
                    None => policies.push((policy, vec![route.to_owned()])),
                }
            }
            let limiters = limits.in_flight.iter().map(|l| (l, "in_flight"));
            let limiters = limiters.chain(limits.websocket.iter().map(|ws| (&ws.connections, "websocket")));
            for (limiter, kind) in limiters {
                // Limiters are told apart by name (a configuration names them after their route).
                match leases.iter_mut().find(|l| l.name == limiter.name() && l.kind == kind) {
                    Some(lease) if !lease.routes.iter().any(|r| r == route) => lease.routes.push(route.to_owned()),
                    Some(_) => {}
                    None => leases.push(LeaseStats {
                        name: limiter.name().to_owned(),
                        kind,
                        routes: vec![route.to_owned()],
                        in_use: u64::try_from(limiter.in_use()).unwrap_or(u64::MAX),
                        refused: self.lease_refusals.of(limiter.name()),
                        refused_per_second: None,
                        adaptive: limiter.adaptive_limit().map(AdaptiveStats::of),
                    }),
                }
            }
        }
        let mut top: Vec<TopKey> = policies.iter().flat_map(|(p, _)| p.top_refused()).collect();
        let limiters = self.lease_refusals.limiters();
        top.extend(self.lease_refusals.top().into_iter().map(|(id, count, error)| TopKey {
            key: id.display(),
            policy: id.limit().and_then(|i| limiters.get(i)).map_or_else(String::new, |n| (*n).to_owned()),
            limit: None,
            reason: id.reason,
            count,
            error,
            per_second: None,
        }));
        let policies: Vec<PolicyStats> =
            policies.into_iter().map(|(policy, routes)| PolicyStats { routes, ..policy.stats() }).collect();
        Snapshot::new(policies, leases, top)
    }

    /// Counts a lease refused to `key`, for the snapshot (out of the allow path).
    #[cold]
    pub(super) fn count_lease_refusal(&self, denied: &ConcurrencyDenied, key: Key<'_>) {
        let reason = match denied.scope {
            ConcurrencyScope::PerKey => "concurrency_per_key",
            ConcurrencyScope::Global => "concurrency_global",
            ConcurrencyScope::StoreUnavailable => "concurrency_store_unavailable",
            ConcurrencyScope::Adaptive => "concurrency_adaptive",
        };
        self.lease_refusals.refused(denied.name, reason, key);
    }
}

/// Whether `limits` hold anything a snapshot shows.
fn has_limits<St: Store>(limits: &Limits<St>) -> bool {
    limits.policy.is_some() || limits.body_bytes.is_some() || limits.takes_leases()
}
