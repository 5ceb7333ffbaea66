//! Building the middleware from the core's TOML [`Config`]: the core's [`Engine`] reads the file
//! (the same for every adapter); this module only wraps it in the layer.

use tollgate::config::{Config, RouteLimits};
use tollgate::engine::Engine;
use tollgate::{Error, LeaseStore, MemoryStore, Store};

use crate::rate_limit::RateLimitLayer;

impl RateLimitLayer<MemoryStore> {
    /// The middleware described by `config`, on one in-memory store: `[[routes]]` and
    /// `[[websocket]]` entries become per-route [`Limits`](crate::Limits) (see
    /// [`Engine::from_config_with`]), `trusted_proxies` the client-address resolver, `headers`
    /// the header style. Routes not in the configuration are not limited.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        Self::from_config_with(config, &config.memory_store())
    }
}

impl<St: Store + Clone> RateLimitLayer<St> {
    /// [`RateLimitLayer::from_config`] on clones of `store` (e.g. a Redis store).
    pub fn from_config_with(config: &Config, store: &St) -> Result<Self, Error> {
        Ok(Self::with_engine(Engine::from_config_with(config, store)?))
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
        Ok(Self::with_engine(Engine::from_config_with_leases(config, store, leases)?))
    }

    /// The middleware applying `routes` (e.g. [`Config::route_limits_with`]'s, adjusted), with
    /// `config`'s client-address resolver and header style.
    pub fn from_route_limits(config: &Config, routes: impl IntoIterator<Item = RouteLimits<St>>) -> Self {
        Self::with_engine(Engine::from_route_limits(config, routes))
    }
}
