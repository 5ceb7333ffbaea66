//! Building the middleware from the core's TOML [`Config`]: the core turns the file into
//! [`RouteLimits`] (the same for every adapter); this module only maps them to [`Limits`].

use tollgate::config::{Config, RouteLimits};
use tollgate::{Error, LeaseStore, MemoryStore, Store};

use crate::rate_limit::{Limits, RateLimitLayer, WebSocketLimits};

impl RateLimitLayer<MemoryStore> {
    /// The middleware described by `config`, on one in-memory store: `[[routes]]` and
    /// `[[websocket]]` entries become per-route [`Limits`] (see
    /// [`Config::route_limits_with`]), `trusted_proxies` the client-address resolver, `headers`
    /// the header style. Routes not in the configuration are not limited.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        Self::from_config_with(config, &config.memory_store())
    }
}

impl<St: Store + Clone> RateLimitLayer<St> {
    /// [`RateLimitLayer::from_config`] on clones of `store` (e.g. a Redis store).
    pub fn from_config_with(config: &Config, store: &St) -> Result<Self, Error> {
        Ok(Self::from_route_limits(config, config.route_limits_with(store)?))
    }

    /// [`RateLimitLayer::from_config_with`], the concurrency leases (in-flight requests,
    /// WebSocket connections) counted in `leases` and shared by every instance using it (e.g.
    /// the same Redis store: `concurrent_per_key = 3` then means 3 across all instances). See
    /// [`RouteLimits::share_leases`]; the checks of such routes run in a boxed future.
    pub fn from_config_with_leases<L: LeaseStore + Clone>(
        config: &Config,
        store: &St,
        leases: &L,
    ) -> Result<Self, Error> {
        let routes = config.route_limits_with(store)?.into_iter().map(|r| r.share_leases(leases));
        Ok(Self::from_route_limits(config, routes))
    }

    /// The middleware applying `routes` (e.g. [`Config::route_limits_with`]'s, adjusted), with
    /// `config`'s client-address resolver and header style.
    pub fn from_route_limits(config: &Config, routes: impl IntoIterator<Item = RouteLimits<St>>) -> Self {
        let mut layer = RateLimitLayer::with_limits(Limits::empty())
            .client_ip_resolver(config.client_ip_resolver())
            .headers(config.headers);
        for route in routes {
            let path = route.path.clone();
            let methods = route.methods.clone();
            layer = layer.route_methods(&path, methods, Limits::from(route));
        }
        layer
    }
}

impl<St: Store> From<RouteLimits<St>> for Limits<St> {
    /// The route's limits, its leases and per-key message limits counted by the route's key.
    fn from(route: RouteLimits<St>) -> Self {
        let mut limits = Limits::empty().lease_key(route.key.clone());
        if let Some(policy) = route.policy {
            limits = limits.policy(policy);
        }
        if let Some(max) = route.max_body {
            limits = limits.max_body(max);
        }
        if let Some(policy) = route.body_bytes {
            limits = limits.body_bytes(policy);
        }
        if let Some(limiter) = route.in_flight {
            limits = limits.in_flight(limiter);
        }
        if let Some(ws) = route.websocket {
            limits = limits.websocket(WebSocketLimits::new(ws.connections, ws.messages).key(route.key));
        }
        limits
    }
}
