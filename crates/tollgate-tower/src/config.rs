//! Building the middleware from the core's TOML [`Config`].

use std::str::FromStr;

use http::Method;
use tollgate::config::Config;
use tollgate::websocket::MessageLimits;
use tollgate::{ClientIpResolver, ConcurrencyLimiter, Error, Limit, MemoryStore, Policy, Store};

use crate::rate_limit::{Limits, RateLimitLayer, WebSocketLimits};

impl RateLimitLayer<MemoryStore> {
    /// The middleware described by `config`, on one in-memory store: `[[routes]]` and
    /// `[[websocket]]` entries become per-route [`Limits`], `trusted_proxies` the client-address
    /// resolver, `headers` the header style. Routes not in the configuration are not limited.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        let mut store = MemoryStore::builder();
        if let Some(n) = config.store.max_keys {
            store = store.max_keys(n);
        }
        Self::from_config_with(config, &store.build())
    }
}

impl<St: Store + Clone> RateLimitLayer<St> {
    /// [`RateLimitLayer::from_config`] on clones of `store` (e.g. a Redis store).
    pub fn from_config_with(config: &Config, store: &St) -> Result<Self, Error> {
        let policies = config.policies_with(store)?;
        let mut layer = RateLimitLayer::with_limits(Limits::empty())
            .client_ip_resolver(ClientIpResolver::new().trust_all(config.trusted_proxies.iter().copied()))
            .headers(config.headers);
        for (i, route) in config.routes.iter().enumerate() {
            let mut limits = Limits::empty();
            if let Some(name) = &route.policy {
                let policy = policies
                    .get(name)
                    .ok_or_else(|| Error::Config {
                        field: format!("routes[{i}].policy"),
                        value: format!("{name:?}"),
                        reason: "no such policy".into(),
                    })?
                    .clone();
                limits = limits.policy(policy);
            }
            if let Some(max) = route.max_body {
                limits = limits.max_body(max.0);
            }
            if let Some(quota) = route.body_bytes {
                let key = route.key.kind(64, &format!("routes[{i}].key"))?;
                let policy = Policy::builder("body_bytes")
                    .limit(Limit::new("body_bytes", quota).key(key))
                    .build_with(store.clone())?;
                limits = limits.body_bytes(policy);
            }
            if let Some(n) = route.concurrent_per_key {
                limits = limits.in_flight(ConcurrencyLimiter::new("in_flight").per_key(n));
            }
            let methods = methods(&route.methods, i)?;
            layer = layer.route_methods(&route.path, methods, limits);
        }
        for (i, ws) in config.websocket.iter().enumerate() {
            let key = ws.key.kind(64, &format!("websocket[{i}].key"))?;
            let mut limits = Limits::empty();
            if let Some(quota) = ws.connections {
                let policy = Policy::builder("ws_connections")
                    .limit(Limit::new("connections", quota).key(key))
                    .build_with(store.clone())?;
                limits = limits.policy(policy);
            }
            let mut connections = ConcurrencyLimiter::new("ws_open");
            if let Some(n) = ws.concurrent_per_key {
                connections = connections.per_key(n);
            }
            if let Some(n) = ws.concurrent_global {
                connections = connections.global(n);
            }
            let limits = limits.websocket(WebSocketLimits::new(connections, MessageLimits::from_config(ws)));
            layer = layer.route_methods(&ws.path, [Method::GET], limits);
        }
        Ok(layer)
    }
}

fn methods(names: &[String], route: usize) -> Result<Vec<Method>, Error> {
    names
        .iter()
        .map(|m| {
            Method::from_str(&m.to_ascii_uppercase()).map_err(|_| Error::Config {
                field: format!("routes[{route}].methods"),
                value: format!("{m:?}"),
                reason: "not an HTTP method".into(),
            })
        })
        .collect()
}
