//! Carrying the state of a running engine's limits into a new one (see
//! [`Engine::keeping_state_of`](super::Engine::keeping_state_of)).

use std::collections::HashMap;
use std::sync::Arc;

use super::limits::{Limits, WebSocketLimits};
use crate::concurrency::ConcurrencyLimiter;
use crate::policy::Policy;
use crate::store::Store;
use crate::websocket::MessageLimits;

/// The running engine's policies, limiters and WebSocket message limits, each found by name
/// (a route's message limits by its path). An engine may hold several distinct policies of one
/// name (built apart, e.g. one per route): the first of a name in the new engine takes over the
/// first of that name in the running one, the second the second, so that no two share a state
/// that was apart. The order is the engine's: default limits, then routes as added.
pub(super) struct Carry<'p, St: Store> {
    policies: HashMap<&'p str, Vec<&'p Policy<St>>>,
    limiters: HashMap<&'p str, Vec<&'p ConcurrencyLimiter>>,
    messages: HashMap<&'p str, Vec<&'p Arc<MessageLimits>>>,
    /// The new engine's policies seen so far, each with what it became: one policy on several
    /// routes becomes one policy again.
    policies_done: Vec<(Policy<St>, Policy<St>)>,
    limiters_done: Vec<(ConcurrencyLimiter, ConcurrencyLimiter)>,
    /// How many distinct policies (limiters, message limits) of each name the new engine took.
    taken: HashMap<String, usize>,
}

impl<'p, St: Store + Clone> Carry<'p, St> {
    pub(super) fn of(previous: impl Iterator<Item = (Option<&'p str>, &'p Limits<St>)>) -> Self {
        let mut carry = Carry {
            policies: HashMap::new(),
            limiters: HashMap::new(),
            messages: HashMap::new(),
            policies_done: Vec::new(),
            limiters_done: Vec::new(),
            taken: HashMap::new(),
        };
        for (path, limits) in previous {
            for policy in limits.policy.iter().chain(&limits.body_bytes) {
                let list = carry.policies.entry(policy.name()).or_default();
                if !list.iter().any(|p| p.same(policy)) {
                    list.push(policy);
                }
            }
            let websocket = limits.websocket.as_ref().map(|ws| &ws.connections);
            for limiter in limits.in_flight.iter().chain(websocket) {
                let list = carry.limiters.entry(limiter.name()).or_default();
                if !list.iter().any(|l| l.same(limiter)) {
                    list.push(limiter);
                }
            }
            if let (Some(path), Some(ws)) = (path, &limits.websocket) {
                carry.messages.entry(path).or_default().push(&ws.messages);
            }
        }
        carry
    }

    /// `limits` deciding on the running engine's state.
    pub(super) fn limits(&mut self, limits: &Limits<St>, path: Option<&str>) -> Limits<St> {
        let mut out = limits.clone();
        out.policy = limits.policy.as_ref().map(|p| self.policy(p));
        out.body_bytes = limits.body_bytes.as_ref().map(|p| self.policy(p));
        out.in_flight = limits.in_flight.as_ref().map(|l| self.limiter(l));
        out.websocket = limits.websocket.as_ref().map(|ws| WebSocketLimits {
            connections: self.limiter(&ws.connections),
            messages: match path {
                Some(path) => self.messages(path, &ws.messages),
                None => Arc::clone(&ws.messages),
            },
            key: ws.key.clone(),
        });
        out.refreshed()
    }

    fn nth(&mut self, kind: char, name: &str) -> usize {
        let n = self.taken.entry(format!("{kind}{name}")).or_default();
        *n += 1;
        *n - 1
    }

    fn policy(&mut self, new: &Policy<St>) -> Policy<St> {
        if let Some((_, done)) = self.policies_done.iter().find(|(p, _)| p.same(new)) {
            return done.clone();
        }
        let n = self.nth('p', new.name());
        let rewired = match self.policies.get(new.name()).and_then(|list| list.get(n)) {
            Some(old) => new.keeping_state_of(old),
            None => new.clone(),
        };
        self.policies_done.push((new.clone(), rewired.clone()));
        rewired
    }

    fn limiter(&mut self, new: &ConcurrencyLimiter) -> ConcurrencyLimiter {
        if let Some((_, done)) = self.limiters_done.iter().find(|(l, _)| l.same(new)) {
            return done.clone();
        }
        let n = self.nth('l', new.name());
        let rewired = match self.limiters.get(new.name()).and_then(|list| list.get(n)) {
            Some(old) => new.keeping_counts_of(old),
            None => new.clone(),
        };
        self.limiters_done.push((new.clone(), rewired.clone()));
        rewired
    }

    fn messages(&mut self, path: &str, new: &Arc<MessageLimits>) -> Arc<MessageLimits> {
        let n = self.nth('m', path);
        match self.messages.get(path).and_then(|list| list.get(n)) {
            Some(old) => Arc::new((**new).clone().keeping_state_of(old)),
            None => Arc::clone(new),
        }
    }
}
