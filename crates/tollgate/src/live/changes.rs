//! What a reload changed, for its log line and its caller.

use std::fmt;

use crate::concurrency::{AdaptiveAlgorithm, AdaptiveSettings};
use crate::engine::Engine;
use crate::policy::{Limit, Policy, carries};
use crate::store::Store;

/// What a reload changed, by limit. A limit is named `policy/limit` (`api/per_ip`; a route's
/// generated policies as `body_bytes:/upload/body_bytes`), a concurrency limiter by its name
/// (`in_flight:/upload`, `ws_open:/ws`), a WebSocket route's per-key message limits as
/// `ws_key_messages:/ws`.
///
/// ```
/// use tollgate::live::LiveEngine;
///
/// let config = |quota: &str| format!("[policies.api]\nlimits = [{{ name = \"per_ip\", quota = \"{quota}\" }}]\n[[routes]]\npath = \"/api\"\npolicy = \"api\"");
/// let live = LiveEngine::from_config(config("10/min").parse()?)?;
/// let changes = live.reload(config("5/min").parse()?)?;
/// assert_eq!(changes.changed, ["api/per_ip: 10/1min -> 5/1min"]);
/// assert_eq!(changes.to_string(), "1 limit changed (api/per_ip: 10/1min -> 5/1min)");
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// Limits the new configuration adds, starting with no state.
    pub added: Vec<String>,
    /// Limits it no longer has: their state is released once the requests they admitted are done.
    pub removed: Vec<String>,
    /// Limits it keeps, with their state, whose quota, tiers, key quotas, caps or action changed
    /// (`api/per_ip: 10/1min -> 5/1min`): the new ones apply from the next decision.
    pub changed: Vec<String>,
    /// Limits of the same name whose key or algorithm changed: they start afresh, as the old
    /// state counted something else.
    pub reset: Vec<String>,
    /// Policies whose allow- or deny-list, penalty, dry-run or failure mode changed.
    pub policies: Vec<String>,
    /// Route entries added (`GET /api`, or the pattern alone for every method).
    pub routes_added: Vec<String>,
    /// Route entries removed.
    pub routes_removed: Vec<String>,
    /// Limits kept unchanged.
    pub unchanged: usize,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.reset.is_empty()
            && self.policies.is_empty()
            && self.routes_added.is_empty()
            && self.routes_removed.is_empty()
    }

    /// What changed from `old` to `new` (`new` keeping `old`'s state, see
    /// [`Engine::keeping_state_of`]).
    pub(crate) fn between<St: Store>(old: &Engine<St>, new: &Engine<St>) -> Self {
        let mut changes = Changes::default();
        let (old_policies, new_policies) = (policies(old), policies(new));
        let limits = |policies: &[&Policy<St>]| -> Vec<(String, Limit)> {
            policies
                .iter()
                .flat_map(|p| p.limits().map(move |l| (format!("{}/{}", p.name(), l.name()), l.clone())))
                .collect()
        };
        let (old_limits, new_limits) = (limits(&old_policies), limits(&new_policies));
        for (name, limit) in &new_limits {
            match old_limits.iter().find(|(n, _)| n == name) {
                None => changes.added.push(name.clone()),
                Some((_, was)) if !carries(was, limit) => changes.reset.push(format!("{name} (key or algorithm)")),
                Some((_, was)) if was.quota() != limit.quota() => {
                    changes.changed.push(format!("{name}: {} -> {}", was.quota(), limit.quota()));
                }
                Some((_, was)) if was != limit => {
                    changes.changed.push(format!("{name}: tiers, key quotas or action"));
                }
                Some(_) => changes.unchanged += 1,
            }
        }
        for (name, _) in &old_limits {
            if !new_limits.iter().any(|(n, _)| n == name) {
                changes.removed.push(name.clone());
            }
        }
        for policy in &new_policies {
            if old_policies.iter().any(|p| p.name() == policy.name() && !p.same_settings(policy))
                && !changes.policies.iter().any(|n| n == policy.name())
            {
                changes.policies.push(policy.name().to_owned());
            }
        }
        changes.limiters(old, new);
        changes.message_limits(old, new);
        let entries = |engine: &Engine<St>| -> Vec<String> {
            engine
                .route_entries()
                .map(|(path, methods)| match methods {
                    [] => path.to_owned(),
                    methods => {
                        let names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
                        format!("{} {path}", names.join(","))
                    }
                })
                .collect()
        };
        let (old_routes, new_routes) = (entries(old), entries(new));
        changes.routes_added = new_routes.iter().filter(|r| !old_routes.contains(r)).cloned().collect();
        changes.routes_removed = old_routes.iter().filter(|r| !new_routes.contains(r)).cloned().collect();
        changes
    }

    /// The concurrency limiters' changes: by name, their caps.
    fn limiters<St: Store>(&mut self, old: &Engine<St>, new: &Engine<St>) {
        type Caps = (Option<u32>, Option<u32>, Option<AdaptiveSettings>);
        let limiters = |engine: &Engine<St>| -> Vec<(String, Caps)> {
            let mut out: Vec<(String, Caps)> = Vec::new();
            for (_, limits) in engine.all_limits() {
                let websocket = limits.websocket.as_ref().map(|ws| &ws.connections);
                for l in limits.in_flight.iter().chain(websocket) {
                    if !out.iter().any(|(n, _)| n == l.name()) {
                        let adaptive = l.adaptive_limit().map(|a| *a.settings());
                        out.push((l.name().to_owned(), (l.per_key_cap(), l.global_cap(), adaptive)));
                    }
                }
            }
            out
        };
        let (was, now) = (limiters(old), limiters(new));
        let caps = |(per_key, global, adaptive): &Caps| {
            let cap = |c: &Option<u32>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
            let mut text = format!("per key {}, global {}", cap(per_key), cap(global));
            if let Some(a) = adaptive {
                let algorithm = match a.algorithm {
                    AdaptiveAlgorithm::Gradient { tolerance, probe_every } => {
                        format!("gradient tolerance {tolerance} probe every {probe_every:?}")
                    }
                    AdaptiveAlgorithm::Aimd { latency_threshold, increase } => {
                        format!("aimd threshold {latency_threshold:?} increase {increase}")
                    }
                };
                text += &format!(", adaptive {algorithm} {}..={} from {}", a.min, a.max, a.initial);
            }
            text
        };
        for (name, limits) in &now {
            match was.iter().find(|(n, _)| n == name) {
                None => self.added.push(name.clone()),
                Some((_, before)) if before != limits => {
                    self.changed.push(format!("{name}: {} -> {}", caps(before), caps(limits)));
                }
                Some(_) => self.unchanged += 1,
            }
        }
        for (name, _) in &was {
            if !now.iter().any(|(n, _)| n == name) {
                self.removed.push(name.clone());
            }
        }
    }

    /// The WebSocket routes' per-key message limits: by route pattern, their state kept or not.
    fn message_limits<St: Store>(&mut self, old: &Engine<St>, new: &Engine<St>) {
        let per_key = |engine: &Engine<St>| -> Vec<(String, crate::websocket::PerKeyLimits)> {
            engine
                .all_limits()
                .filter_map(|(path, limits)| {
                    let per_key = limits.websocket.as_ref()?.messages.per_key.clone()?;
                    Some((format!("ws_key_messages:{}", path?), per_key))
                })
                .collect()
        };
        let (was, now) = (per_key(old), per_key(new));
        for (name, limits) in &now {
            match was.iter().find(|(n, _)| n == name) {
                None => self.added.push(name.clone()),
                Some((_, old)) if !limits.shares_state_with(old) => {
                    self.reset.push(format!("{name} (kinds or key bound)"));
                }
                Some((_, old))
                    if (old.messages, old.bytes, &old.kinds) != (limits.messages, limits.bytes, &limits.kinds) =>
                {
                    self.changed.push(format!("{name}: quotas"));
                }
                Some(_) => self.unchanged += 1,
            }
        }
        for (name, _) in &was {
            if !now.iter().any(|(n, _)| n == name) {
                self.removed.push(name.clone());
            }
        }
    }
}

/// The engine's distinct policies, in its order.
fn policies<St: Store>(engine: &Engine<St>) -> Vec<&Policy<St>> {
    let mut out: Vec<&Policy<St>> = Vec::new();
    for (_, limits) in engine.all_limits() {
        for policy in limits.policy.iter().chain(&limits.body_bytes) {
            if !out.iter().any(|p| p.same(policy)) {
                out.push(policy);
            }
        }
    }
    out
}

impl fmt::Display for Changes {
    /// One line: `1 limit changed (api/per_ip: 10/1min -> 5/1min), 1 added (api/per_user)`, or
    /// `no change`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let mut first = true;
        let mut part = |f: &mut fmt::Formatter<'_>, what: &str, items: &[String]| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            let sep = if first { "" } else { ", " };
            first = false;
            write!(f, "{sep}{what} ({})", items.join(", "))
        };
        let n = |count: usize, one: &str, many: &str| format!("{count} {}", if count == 1 { one } else { many });
        part(f, &n(self.changed.len(), "limit changed", "limits changed"), &self.changed)?;
        part(f, &format!("{} added", self.added.len()), &self.added)?;
        part(f, &format!("{} removed", self.removed.len()), &self.removed)?;
        part(f, &format!("{} reset", self.reset.len()), &self.reset)?;
        part(f, "policy settings changed", &self.policies)?;
        part(f, "routes added", &self.routes_added)?;
        part(f, "routes removed", &self.routes_removed)
    }
}
