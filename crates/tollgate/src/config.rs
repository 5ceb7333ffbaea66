//! Configuration from TOML: stores, named policies, per-route limits and WebSocket limits.
//! Unknown fields are errors; invalid values are errors that name the field and the value.
//! [`Config::route_limits_with`] turns the routes and WebSocket endpoints into framework-free
//! [`RouteLimits`], which every adapter applies alike.
//!
//! ```
//! use tollgate::config::Config;
//!
//! let config: Config = r#"
//! [policies.per_ip]
//! limits = [{ name = "per_ip", quota = "5/s burst 10", key = "ip" }]
//!
//! [[routes]]
//! path = "/api/echo"
//! policy = "per_ip"
//! max_body = "64KiB"
//! body_bytes = "1MiB/min"
//!
//! [[websocket]]
//! path = "/ws"
//! connections = "10/min"
//! concurrent_per_key = 3
//! lease_failure_mode = "closed"  # 503 while a shared (Redis) count is unreachable
//! messages = "20/10s"
//! key_messages = "40/10s"    # shared by all of a client's connections
//! max_message = "16KiB"
//! kinds = [{ name = "catch_up", field = "action", equals = "catch_up", quota = "2/min", key_quota = "3/min" }]
//! "#.parse()?;
//! let policies = config.policies()?;
//! assert_eq!(policies["per_ip"].name(), "per_ip");
//! assert_eq!(config.routes[0].max_body.map(|b| b.0), Some(65_536));
//!
//! let bad = "[policies.p]\nlimits = [{ name = \"x\", quota = \"5/fortnight\" }]".parse::<Config>();
//! assert!(bad.unwrap_err().to_string().contains("5/fortnight"));
//! # Ok::<(), tollgate::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::algorithm::{Algorithm, OnExceed};
use crate::client_ip::{ClientIpResolver, ForwardingHeader};
use crate::concurrency::{AdaptiveLimit, ConcurrencyLimiter, LeaseStore};
use crate::error::Error;
use crate::headers::HeaderOptions;
use crate::key::OwnedKey;
use crate::policy::{FailureMode, KeyKind, Limit, MissingKey, Policy, PolicyBuilder};
use crate::quota::{Quota, parse_amount, parse_duration};
use crate::store::{MemoryStore, OnFull, Store};
use crate::websocket::MessageLimits;

/// A duration written as text: `30s`, `1500ms`, `2min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(DurationText).map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::quota::DisplayDuration(self.0))
    }
}

/// A size in bytes written as text or a number: `16KiB`, `1MB`, `65536`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_amount(&t).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Which headers and body responses carry.
    #[serde(default)]
    pub headers: HeaderOptions,
    /// Proxies whose forwarding headers are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding headers read from trusted proxies, in order (the first present decides):
    /// `"x_forwarded_for"` (the default), `"forwarded"` (RFC 7239), `"x_real_ip"`. Name only the
    /// headers your proxies write: the others arrive as the client sent them.
    #[serde(default = "default_forwarding_headers")]
    pub forwarding_headers: Vec<ForwardingHeader>,
    /// Named policies.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Per-route limits.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// WebSocket limits, per path.
    #[serde(default)]
    pub websocket: Vec<WebSocketConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: StoreConfig::default(),
            headers: HeaderOptions::default(),
            trusted_proxies: Vec::new(),
            forwarding_headers: default_forwarding_headers(),
            policies: BTreeMap::new(),
            routes: Vec::new(),
            websocket: Vec::new(),
        }
    }
}

fn default_forwarding_headers() -> Vec<ForwardingHeader> {
    vec![ForwardingHeader::XForwardedFor]
}

/// Which store holds state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process ([`MemoryStore`]).
    #[default]
    Memory,
    /// Redis (the `tollgate-redis` crate).
    Redis,
}

/// `[store]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub kind: StoreKind,
    /// The Redis URL (`redis://127.0.0.1:6379`), or several for a cluster.
    #[serde(default)]
    pub url: Vec<String>,
    /// A prefix for every Redis key.
    pub prefix: Option<String>,
    /// The longest a Redis decision may take.
    pub timeout: Option<DurationText>,
    /// About the most keys tracked per limit in memory; the exact bound is in
    /// [`MemoryStoreBuilder::max_keys`](crate::store::MemoryStoreBuilder::max_keys).
    pub max_keys: Option<usize>,
    /// What the in-memory store does with a new key when it tracks `max_keys` keys and none is
    /// idle: `deny` (the default: 503 with `Retry-After: 1`, outcome `key_table_full`) or
    /// `allow` (admit it without tracking it).
    pub on_full: Option<OnFull>,
}

/// What to do when the store fails, as written in configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureModeConfig {
    /// See [`FailureMode::Open`].
    #[default]
    Open,
    /// See [`FailureMode::Closed`].
    Closed,
    /// See [`FailureMode::Fallback`].
    Fallback,
}

impl From<FailureModeConfig> for FailureMode {
    fn from(mode: FailureModeConfig) -> Self {
        match mode {
            FailureModeConfig::Open => FailureMode::Open,
            FailureModeConfig::Closed => FailureMode::Closed,
            FailureModeConfig::Fallback => FailureMode::Fallback,
        }
    }
}

/// Which algorithm an `adaptive` table uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveAlgorithmConfig {
    /// See [`AdaptiveLimit::gradient`].
    #[default]
    Gradient,
    /// See [`AdaptiveLimit::aimd`]; needs `latency_threshold`.
    Aimd,
}

/// `adaptive = { ... }` on a route (requests in flight) or a WebSocket endpoint (open
/// connections): a concurrency cap that follows the service's latency and failures, in this
/// process (see [`adaptive`](crate::concurrency::adaptive)). Unset fields take the
/// [`AdaptiveBuilder`](crate::concurrency::AdaptiveBuilder)'s defaults.
///
/// ```toml
/// [[routes]]
/// path = "/api/search"
/// adaptive = { algorithm = "gradient", min = 4, max = 200, tolerance = 1.2 }
///
/// [[websocket]]
/// path = "/ws"
/// adaptive = { algorithm = "aimd", latency_threshold = "250ms", max = 5000 }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// `gradient` (the default) or `aimd`.
    #[serde(default)]
    pub algorithm: AdaptiveAlgorithmConfig,
    /// The smallest cap (default 4).
    pub min: Option<u32>,
    /// The largest cap (default 1000).
    pub max: Option<u32>,
    /// The cap to start from (default 20).
    pub initial: Option<u32>,
    /// The shortest measuring window (default `100ms`).
    pub window: Option<DurationText>,
    /// The fewest latencies a window needs (default 10).
    pub min_samples: Option<u32>,
    /// What the cap is multiplied by on failures, and with AIMD over the threshold (default 0.9).
    pub backoff: Option<f64>,
    /// The share of failed (5xx) requests a window may have before the cap backs off (default
    /// 0.05).
    pub failure_ratio: Option<f64>,
    /// Gradient: latency taken as normal, as a multiple of the minimum (default 1.2).
    pub tolerance: Option<f64>,
    /// Gradient: how often the minimum latency is measured again (default `60s`; `0s`: only at
    /// startup).
    pub probe_every: Option<DurationText>,
    /// AIMD (required): the mean latency over which the cap shrinks.
    pub latency_threshold: Option<DurationText>,
    /// AIMD: how much the cap grows per window (default 1).
    pub increase: Option<u32>,
}

impl AdaptiveConfig {
    /// The limit, or an error naming `at.adaptive.<field>`.
    pub fn limit(&self, at: &str) -> Result<AdaptiveLimit, Error> {
        let wrong_algorithm = |field: &str, value: String, algorithm: &str| {
            Err(Error::config(
                format!("{at}.adaptive.{field}"),
                value,
                format!("applies to algorithm = \"{algorithm}\" only"),
            ))
        };
        let mut builder = match self.algorithm {
            AdaptiveAlgorithmConfig::Gradient => {
                if let Some(t) = &self.latency_threshold {
                    return wrong_algorithm("latency_threshold", format!("{:?}", t.0), "aimd");
                }
                if let Some(n) = self.increase {
                    return wrong_algorithm("increase", n.to_string(), "aimd");
                }
                let mut b = AdaptiveLimit::gradient();
                if let Some(t) = self.tolerance {
                    b = b.tolerance(t);
                }
                if let Some(d) = &self.probe_every {
                    b = b.probe_every(d.0);
                }
                b
            }
            AdaptiveAlgorithmConfig::Aimd => {
                if let Some(t) = self.tolerance {
                    return wrong_algorithm("tolerance", t.to_string(), "gradient");
                }
                if let Some(d) = &self.probe_every {
                    return wrong_algorithm("probe_every", format!("{:?}", d.0), "gradient");
                }
                let Some(threshold) = &self.latency_threshold else {
                    return Err(Error::config(
                        format!("{at}.adaptive.latency_threshold"),
                        "(missing)",
                        "algorithm = \"aimd\" needs the latency over which the cap shrinks, e.g. \"200ms\"",
                    ));
                };
                let mut b = AdaptiveLimit::aimd(threshold.0);
                if let Some(n) = self.increase {
                    b = b.increase(n);
                }
                b
            }
        };
        let defaults = *builder.settings();
        builder = builder.bounds(self.min.unwrap_or(defaults.min), self.max.unwrap_or(defaults.max));
        if let Some(n) = self.initial {
            builder = builder.initial(n);
        }
        if let Some(d) = &self.window {
            builder = builder.window(d.0);
        }
        if let Some(n) = self.min_samples {
            builder = builder.min_samples(n);
        }
        if let Some(f) = self.backoff {
            builder = builder.backoff(f);
        }
        if let Some(r) = self.failure_ratio {
            builder = builder.failure_ratio(r);
        }
        builder.build().map_err(|e| match e {
            Error::Config { field, value, reason } => Error::Config { field: format!("{at}.{field}"), value, reason },
            other => other,
        })
    }
}

/// `[policies.<name>]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The limits, all applied.
    pub limits: Vec<LimitConfig>,
    /// Block a key on a limit it violated for this long.
    pub penalty: Option<DurationText>,
    /// Report refusals without refusing.
    #[serde(default)]
    pub dry_run: bool,
    /// What to do when the store fails.
    #[serde(default)]
    pub failure_mode: FailureModeConfig,
    /// Keys never limited: IP addresses, networks (`10.0.0.0/8`) or identities.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Keys always refused: IP addresses, networks or identities.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Clients put in a tier by key: `{ "alice" = "pro", "203.0.113.9" = "free" }`. Each limit
    /// with that tier gives the key (an identity, IP address or header value, matched against the
    /// limit's key) the tier's quota, whatever tier the application attached to the request; a
    /// limit without the tier gives its default quota. A limit's own `key_quotas` come first.
    #[serde(default)]
    pub key_tiers: BTreeMap<String, String>,
}

/// What a limit counts by, as written: `global`, `ip`, `identity`, `route`, `custom` or
/// `header:<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyText(pub String);

impl Default for KeyText {
    fn default() -> Self {
        KeyText("ip".into())
    }
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(KeyText)
    }
}

impl KeyText {
    /// The key kind, with IPv6 grouped by `v6_prefix` bits.
    pub fn kind(&self, v6_prefix: u8, field: &str) -> Result<KeyKind, Error> {
        Ok(match self.0.as_str() {
            "global" => KeyKind::Global,
            "ip" => KeyKind::Ip { v6_prefix },
            "identity" | "user" => KeyKind::Identity { v6_prefix },
            "route" => KeyKind::Route,
            "custom" => KeyKind::Custom,
            other => match other.strip_prefix("header:") {
                Some(name) => KeyKind::Header(
                    HeaderName::from_str(name.trim())
                        .map_err(|_| Error::config(field, format!("{other:?}"), "not a valid header name"))?,
                ),
                None => {
                    return Err(Error::config(
                        field,
                        format!("{other:?}"),
                        "expected global, ip, identity, route, custom or header:<name>",
                    ));
                }
            },
        })
    }
}

/// What a missing key does, as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyConfig {
    /// See [`MissingKey::Shared`].
    #[default]
    Shared,
    /// See [`MissingKey::Skip`].
    Skip,
    /// See [`MissingKey::Refuse`].
    Refuse,
}

/// What exceeding a limit does, as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceedConfig {
    /// Refuse.
    #[default]
    Reject,
    /// Wait up to `max_delay`, then proceed.
    Delay,
}

/// One limit of a policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Unique within the policy; shown in headers and bodies.
    pub name: String,
    /// The default quota.
    pub quota: Quota,
    /// How it counts (default `gcra`).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// What it counts by (default `ip`).
    #[serde(default)]
    pub key: KeyText,
    /// Bits of an IPv6 address that identify one client (default 64).
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// `reject` (default) or `delay`.
    #[serde(default)]
    pub on_exceed: ExceedConfig,
    /// The longest wait with `on_exceed = "delay"` (default 1s).
    pub max_delay: Option<DurationText>,
    /// What a request whose key is missing does.
    #[serde(default)]
    pub on_missing_key: MissingKeyConfig,
    /// Quotas per tier.
    #[serde(default)]
    pub tiers: BTreeMap<String, Quota>,
    /// Quotas of single keys (an identity, IP address or header value, matched against the
    /// limit's key): `{ "203.0.113.9" = "1000/min" }`. They come before tiers.
    #[serde(default)]
    pub key_quotas: BTreeMap<String, Quota>,
}

fn default_v6_prefix() -> u8 {
    64
}

/// `[[routes]]`: limits of one route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route: a path pattern (`/api/items`, `/api/items/{id}`, `/files/{*rest}`; see
    /// [the pattern syntax](crate::engine#route-patterns)), matched by the core on the request's
    /// path, so that it means the same on every adapter; a bad pattern is an error naming this
    /// field. A name without a leading `/` matches only a route name the application reports.
    pub path: String,
    /// Methods it applies to (all when empty). A HEAD request takes the GET entry of its path
    /// when no entry names HEAD (the GET handler serves it).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The policy checked for each request.
    pub policy: Option<String>,
    /// The largest body (413 above it).
    pub max_body: Option<ByteSize>,
    /// Body bytes per period per key (429 above it).
    pub body_bytes: Option<Quota>,
    /// What `body_bytes` and `concurrent_per_key` count by (default `ip`).
    #[serde(default)]
    pub key: KeyText,
    /// At most this many requests in flight per key.
    pub concurrent_per_key: Option<u32>,
    /// What a `concurrent_per_key` counted in a shared store (Redis) does when the store fails:
    /// `fallback` (the default: each instance counts its own), `open` (admit uncounted) or
    /// `closed` (refuse with 503).
    pub lease_failure_mode: Option<FailureModeConfig>,
    /// Requests in flight on the route in all, in this process, at most what an adaptive limit
    /// allows now (503 above it): see [`AdaptiveConfig`].
    pub adaptive: Option<AdaptiveConfig>,
}

/// What a WebSocket message over a rate limit does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageAction {
    /// Drop it and send an error frame (default).
    #[default]
    Drop,
    /// Hold it until the limit allows (up to `max_delay`).
    Delay,
    /// Close the connection (code 4429).
    Close,
}

/// A kind of WebSocket message with its own limit, chosen by a JSON field of text messages.
/// At least one of `quota` and `key_quota` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageKindConfig {
    /// The kind's name (shown in error frames).
    pub name: String,
    /// The JSON field to look at (default `action`).
    #[serde(default = "default_kind_field")]
    pub field: String,
    /// The value that makes a message this kind.
    pub equals: String,
    /// The kind's quota, per connection.
    pub quota: Option<Quota>,
    /// The kind's quota per key, shared by all of the key's connections.
    pub key_quota: Option<Quota>,
}

fn default_kind_field() -> String {
    "action".into()
}

/// `[[websocket]]`: limits of one WebSocket endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// The upgrade route, a path pattern as [`RouteConfig::path`].
    pub path: String,
    /// What per-key limits count by (default `ip`): the connection rate, the open connections
    /// and the per-key message limits.
    #[serde(default)]
    pub key: KeyText,
    /// New connections per period per key.
    pub connections: Option<Quota>,
    /// Open connections per key.
    pub concurrent_per_key: Option<u32>,
    /// Open connections in all (503 when full).
    pub concurrent_global: Option<u32>,
    /// Open connections in all, in this process, at most what an adaptive limit allows now (503
    /// above it), adapting to the latency and failures of the upgrade responses: see
    /// [`AdaptiveConfig`].
    pub adaptive: Option<AdaptiveConfig>,
    /// What the open-connection counts do when a shared store (Redis) counting them fails:
    /// `fallback` (the default: each instance counts its own), `open` (admit uncounted) or
    /// `closed` (refuse the upgrade with 503).
    pub lease_failure_mode: Option<FailureModeConfig>,
    /// Messages per period per connection.
    pub messages: Option<Quota>,
    /// Bytes per period per connection.
    pub bytes: Option<Quota>,
    /// Messages per period per key, shared by all of the key's connections.
    pub key_messages: Option<Quota>,
    /// Bytes per period per key, shared by all of the key's connections.
    pub key_bytes: Option<Quota>,
    /// The largest message (close 1009 above it).
    pub max_message: Option<ByteSize>,
    /// What a message over a rate limit does.
    #[serde(default)]
    pub on_exceed: MessageAction,
    /// The longest wait with `on_exceed = "delay"` (default 1s).
    pub max_delay: Option<DurationText>,
    /// Message kinds with their own limits.
    #[serde(default)]
    pub kinds: Vec<MessageKindConfig>,
}

impl FromStr for Config {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let config: Config =
            toml::from_str(text).map_err(|e| Error::ConfigFile { path: "<text>".into(), source: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::ConfigFile { path: path.display().to_string(), source: Box::new(e) })?;
        Self::from_text_of(path, &text)
    }

    /// Parses and validates `text`, read from the file at `path` (named in errors).
    pub(crate) fn from_text_of(path: &Path, text: &str) -> Result<Self, Error> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::ConfigFile { path: path.display().to_string(), source: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: references between sections, unique names, sizes.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, p) in &self.policies {
            if p.limits.is_empty() {
                return Err(Error::config(
                    format!("policies.{name}.limits"),
                    "[]",
                    "a policy needs at least one limit",
                ));
            }
            for (i, l) in p.limits.iter().enumerate() {
                if p.limits[..i].iter().any(|o| o.name == l.name) {
                    return Err(Error::config(
                        format!("policies.{name}.limits[{i}].name"),
                        format!("{:?}", l.name),
                        "limit names must be unique within a policy",
                    ));
                }
            }
            self.policy_builder(name)?;
        }
        // Every path is a pattern the engine can match (a name without a leading `/` is matched
        // only against the route name an adapter reports); the same path twice (other methods)
        // is one pattern.
        let mut patterns = matchit::Router::new();
        let routes = self.routes.iter().enumerate().map(|(i, r)| (format!("routes[{i}].path"), &r.path));
        let sockets = self.websocket.iter().enumerate().map(|(i, w)| (format!("websocket[{i}].path"), &w.path));
        let mut seen: Vec<&String> = Vec::new();
        for (field, path) in routes.chain(sockets) {
            if path.starts_with('/') && !seen.contains(&path) {
                patterns
                    .insert(path.as_str(), ())
                    .map_err(|e| Error::config(field, format!("{path:?}"), e.to_string()))?;
                seen.push(path);
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(p) = &r.policy
                && !self.policies.contains_key(p)
            {
                return Err(Error::config(format!("routes[{i}].policy"), format!("{p:?}"), "no such policy"));
            }
            if r.max_body == Some(ByteSize(0)) {
                return Err(Error::config(format!("routes[{i}].max_body"), 0, "must be at least 1 byte"));
            }
            r.key.kind(64, &format!("routes[{i}].key"))?;
            methods(&r.methods, i)?;
            if let Some(n) = r.concurrent_per_key
                && n == 0
            {
                return Err(Error::config(format!("routes[{i}].concurrent_per_key"), n, "must be at least 1"));
            }
            if let Some(adaptive) = &r.adaptive {
                adaptive.limit(&format!("routes[{i}]"))?;
            }
            if let (Some(mode), None) = (r.lease_failure_mode, r.concurrent_per_key) {
                return Err(Error::config(
                    format!("routes[{i}].lease_failure_mode"),
                    format!("{mode:?}").to_lowercase(),
                    "applies to concurrent_per_key, which this route does not set",
                ));
            }
        }
        for (i, w) in self.websocket.iter().enumerate() {
            w.key.kind(64, &format!("websocket[{i}].key"))?;
            // A request takes the first entry of its path and method: a second one would never apply.
            let gets =
                |r: &RouteConfig| r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case("get"));
            if let Some(j) = self.routes.iter().position(|r| r.path == w.path && gets(r)) {
                return Err(Error::config(
                    format!("websocket[{i}].path"),
                    format!("{:?}", w.path),
                    format!(
                        "routes[{j}] limits GET on this path too; a request takes one entry's limits, so put the policy in the websocket entry (connections) or the route on other methods"
                    ),
                ));
            }
            if self.websocket[..i].iter().any(|o| o.path == w.path) {
                return Err(Error::config(
                    format!("websocket[{i}].path"),
                    format!("{:?}", w.path),
                    "another websocket entry has this path",
                ));
            }
            for (field, v) in [("concurrent_per_key", w.concurrent_per_key), ("concurrent_global", w.concurrent_global)]
            {
                if v == Some(0) {
                    return Err(Error::config(format!("websocket[{i}].{field}"), 0, "must be at least 1"));
                }
            }
            if let Some(adaptive) = &w.adaptive {
                adaptive.limit(&format!("websocket[{i}]"))?;
            }
            if let (Some(mode), None, None) = (w.lease_failure_mode, w.concurrent_per_key, w.concurrent_global) {
                return Err(Error::config(
                    format!("websocket[{i}].lease_failure_mode"),
                    format!("{mode:?}").to_lowercase(),
                    "applies to concurrent_per_key and concurrent_global, which this endpoint does not set",
                ));
            }
            if w.max_message == Some(ByteSize(0)) {
                return Err(Error::config(format!("websocket[{i}].max_message"), 0, "must be at least 1 byte"));
            }
            if let Some(j) = w.kinds.iter().position(|k| k.quota.is_none() && k.key_quota.is_none()) {
                return Err(Error::config(
                    format!("websocket[{i}].kinds[{j}]"),
                    format!("{:?}", w.kinds[j].name),
                    "a kind needs a quota, a key_quota or both",
                ));
            }
            let mut names: Vec<&str> = w.kinds.iter().map(|k| k.name.as_str()).collect();
            names.sort_unstable();
            if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::config(
                    format!("websocket[{i}].kinds"),
                    format!("{:?}", dup[0]),
                    "duplicate kind name",
                ));
            }
        }
        Ok(())
    }

    /// The builder of policy `name` (to add hooks, or build on another store).
    pub fn policy_builder(&self, name: &str) -> Result<PolicyBuilder, Error> {
        let p =
            self.policies.get(name).ok_or_else(|| Error::config("policies", format!("{name:?}"), "no such policy"))?;
        let mut b = Policy::builder(name).dry_run(p.dry_run).failure_mode(p.failure_mode.into());
        if let Some(d) = p.penalty {
            b = b.penalty(d.0);
        }
        for (list, deny) in [(&p.allow, false), (&p.deny, true)] {
            for (i, entry) in list.iter().enumerate() {
                let field = format!("policies.{name}.{}[{i}]", if deny { "deny" } else { "allow" });
                if entry.is_empty() {
                    return Err(Error::config(field, "\"\"", "an empty key matches nothing"));
                }
                b = match (entry.parse::<IpNet>(), entry.parse::<std::net::IpAddr>()) {
                    (Ok(net), _) if deny => b.deny_net(net),
                    (Ok(net), _) => b.allow_net(net),
                    (_, Ok(ip)) if deny => b.deny(OwnedKey::Ip(ip)),
                    (_, Ok(ip)) => b.allow(OwnedKey::Ip(ip)),
                    _ if deny => b.deny(OwnedKey::from(entry.as_str())),
                    _ => b.allow(OwnedKey::from(entry.as_str())),
                };
            }
        }
        for (i, l) in p.limits.iter().enumerate() {
            let field = format!("policies.{name}.limits[{i}]");
            let mut limit = Limit::new(l.name.as_str(), l.quota)
                .algorithm(l.algorithm)
                .key(l.key.kind(l.ipv6_prefix, &format!("{field}.key"))?)
                .on_missing_key(match l.on_missing_key {
                    MissingKeyConfig::Shared => MissingKey::Shared,
                    MissingKeyConfig::Skip => MissingKey::Skip,
                    MissingKeyConfig::Refuse => MissingKey::Refuse,
                });
            if l.ipv6_prefix > 128 {
                return Err(Error::config(format!("{field}.ipv6_prefix"), l.ipv6_prefix, "must be 0..=128"));
            }
            match (l.on_exceed, l.max_delay) {
                (ExceedConfig::Delay, d) => {
                    limit = limit.on_exceed(OnExceed::Delay { max_wait: d.map_or(Duration::from_secs(1), |d| d.0) });
                }
                (ExceedConfig::Reject, Some(_)) => {
                    return Err(Error::config(
                        format!("{field}.max_delay"),
                        "(set)",
                        "only meaningful with on_exceed = \"delay\"",
                    ));
                }
                (ExceedConfig::Reject, None) => {}
            }
            for (tier, q) in &l.tiers {
                limit = limit.tier(tier, *q);
            }
            let kind = limit.key_kind().clone();
            for (key, q) in &l.key_quotas {
                limit = limit.override_key(config_key(key, &kind), *q);
            }
            // After the limit's own key quotas, which take precedence.
            for (key, tier) in &p.key_tiers {
                if let Some(q) = l.tiers.get(tier) {
                    limit = limit.override_key(config_key(key, &kind), *q);
                }
            }
            b = b.limit(limit);
        }
        for (key, tier) in &p.key_tiers {
            if !p.limits.iter().any(|l| l.tiers.contains_key(tier)) {
                return Err(Error::config(
                    format!("policies.{name}.key_tiers.{key:?}"),
                    format!("{tier:?}"),
                    "no limit of this policy has this tier",
                ));
            }
        }
        Ok(b)
    }

    /// Every policy, on in-memory stores (one store shared by all, honouring `store.max_keys`).
    pub fn policies(&self) -> Result<BTreeMap<String, Policy<MemoryStore>>, Error> {
        self.policies_with(&self.memory_store())
    }

    /// Every policy, on clones of `store`.
    pub fn policies_with<S: Store + Clone>(&self, store: &S) -> Result<BTreeMap<String, Policy<S>>, Error> {
        self.policies
            .keys()
            .map(|name| Ok((name.clone(), self.policy_builder(name)?.build_with(store.clone())?)))
            .collect()
    }

    /// A new in-memory store honouring `store.max_keys` and `store.on_full`.
    pub fn memory_store(&self) -> MemoryStore {
        let mut store = MemoryStore::builder();
        if let Some(n) = self.store.max_keys {
            store = store.max_keys(n);
        }
        if let Some(on_full) = self.store.on_full {
            store = store.on_full(on_full);
        }
        store.build()
    }

    /// The client-address resolver trusting `trusted_proxies`.
    pub fn client_ip_resolver(&self) -> ClientIpResolver {
        ClientIpResolver::new()
            .trust_all(self.trusted_proxies.iter().copied())
            .headers(self.forwarding_headers.iter().copied())
    }

    /// The limits of every `[[routes]]` entry, then of every `[[websocket]]` entry, on one new
    /// in-memory store (see [`Config::route_limits_with`]).
    pub fn route_limits(&self) -> Result<Vec<RouteLimits<MemoryStore>>, Error> {
        self.route_limits_with(&self.memory_store())
    }

    /// The limits of every `[[routes]]` entry, then of every `[[websocket]]` entry, in that
    /// order, with their policies on clones of `store` (e.g. a Redis store). This is what every
    /// adapter applies, so that one file means the same on every framework; an adapter only maps
    /// each [`RouteLimits`] to its own types.
    ///
    /// The per-key WebSocket message limits always live in this process's memory (they are
    /// decided as each message arrives), honouring `store.max_keys`.
    ///
    /// ```
    /// use http::Method;
    /// use tollgate::config::Config;
    /// use tollgate::KeyKind;
    ///
    /// let config: Config = r#"
    /// [policies.per_ip]
    /// limits = [{ name = "per_ip", quota = "5/s", key = "ip" }]
    ///
    /// [[routes]]
    /// path = "/api/hello"
    /// methods = ["get"]
    /// policy = "per_ip"
    /// concurrent_per_key = 4
    ///
    /// [[websocket]]
    /// path = "/ws"
    /// key = "header:x-api-key"
    /// concurrent_per_key = 3
    /// messages = "20/10s"
    /// key_messages = "40/10s"
    /// "#.parse()?;
    /// let routes = config.route_limits()?;
    /// assert_eq!(routes[0].path, "/api/hello");
    /// assert_eq!(routes[0].methods, [Method::GET]);
    /// assert_eq!(routes[0].policy.as_ref().map(|p| p.name()), Some("per_ip"));
    /// assert_eq!(routes[0].key, KeyKind::ip());
    ///
    /// let ws = routes[1].websocket.as_ref().unwrap();
    /// assert_eq!(routes[1].key, KeyKind::Header("x-api-key".parse()?));
    /// assert_eq!(ws.messages.per_key.as_ref().and_then(|p| p.messages), Some("40/10s".parse()?));
    ///
    /// let bad = "[[routes]]\npath = \"/\"\nmethods = [\"FETCH ME\"]".parse::<Config>();
    /// assert!(bad.unwrap_err().to_string().contains("routes[0].methods"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route_limits_with<S: Store + Clone>(&self, store: &S) -> Result<Vec<RouteLimits<S>>, Error> {
        let policies = self.policies_with(store)?;
        let mut out = Vec::with_capacity(self.routes.len() + self.websocket.len());
        for (i, route) in self.routes.iter().enumerate() {
            let key = route.key.kind(64, &format!("routes[{i}].key"))?;
            let policy = match &route.policy {
                Some(name) => Some(
                    policies
                        .get(name)
                        .ok_or_else(|| {
                            Error::config(format!("routes[{i}].policy"), format!("{name:?}"), "no such policy")
                        })?
                        .clone(),
                ),
                None => None,
            };
            let body_bytes = match route.body_bytes {
                Some(quota) => Some(
                    Policy::builder(format!("body_bytes:{}", route.path))
                        .limit(Limit::new("body_bytes", quota).key(key.clone()))
                        .build_with(store.clone())?,
                ),
                None => None,
            };
            let in_flight = if route.concurrent_per_key.is_some() || route.adaptive.is_some() {
                let mut limiter = self.bounded(ConcurrencyLimiter::new(format!("in_flight:{}", route.path)));
                if let Some(n) = route.concurrent_per_key {
                    limiter = limiter.per_key(n);
                }
                if let Some(adaptive) = &route.adaptive {
                    limiter = limiter.adaptive(adaptive.limit(&format!("routes[{i}]"))?);
                }
                Some(lease_failure(limiter, route.lease_failure_mode))
            } else {
                None
            };
            out.push(RouteLimits {
                path: route.path.clone(),
                methods: methods(&route.methods, i)?,
                policy,
                max_body: route.max_body.map(|b| b.0),
                body_bytes,
                in_flight,
                key,
                websocket: None,
            });
        }
        for (i, ws) in self.websocket.iter().enumerate() {
            let key = ws.key.kind(64, &format!("websocket[{i}].key"))?;
            let policy = match ws.connections {
                Some(quota) => Some(
                    Policy::builder(format!("ws_connections:{}", ws.path))
                        .limit(Limit::new("connections", quota).key(key.clone()))
                        .build_with(store.clone())?,
                ),
                None => None,
            };
            let mut connections = self.bounded(ConcurrencyLimiter::new(format!("ws_open:{}", ws.path)));
            if let Some(n) = ws.concurrent_per_key {
                connections = connections.per_key(n);
            }
            if let Some(n) = ws.concurrent_global {
                connections = connections.global(n);
            }
            if let Some(adaptive) = &ws.adaptive {
                connections = connections.adaptive(adaptive.limit(&format!("websocket[{i}]"))?);
            }
            connections = lease_failure(connections, ws.lease_failure_mode);
            let mut messages = MessageLimits::from_config(ws);
            if let (Some(n), Some(_)) = (self.store.max_keys, &messages.per_key) {
                messages = messages.per_key_max_keys(n);
            }
            out.push(RouteLimits {
                path: ws.path.clone(),
                methods: vec![Method::GET],
                policy,
                max_body: None,
                body_bytes: None,
                in_flight: None,
                key,
                websocket: Some(WebSocketRouteLimits { connections, messages }),
            });
        }
        Ok(out)
    }
}

impl Config {
    /// `limiter` tracking at most `store.max_keys` keys, when set: every table that grows with
    /// distinct keys follows the configured bound.
    fn bounded(&self, limiter: ConcurrencyLimiter) -> ConcurrencyLimiter {
        match self.store.max_keys {
            Some(n) => limiter.max_keys(n),
            None => limiter,
        }
    }
}

/// The key a limit counted by `kind` has for `text`, as written in `key_quotas` or `key_tiers`:
/// an IP address as the limit groups it (IPv6 by its prefix), a header's value as the bytes a
/// request's header resolves to, anything else as text (an identity, a route, a custom key).
fn config_key(text: &str, kind: &KeyKind) -> OwnedKey {
    match (kind, text.parse::<std::net::IpAddr>()) {
        (KeyKind::Ip { v6_prefix } | KeyKind::Identity { v6_prefix }, Ok(ip)) => {
            crate::Key::ip_grouped(ip, *v6_prefix).to_owned_key()
        }
        (KeyKind::Header(_), _) => crate::Key::Bytes(text.as_bytes()).to_owned_key(),
        _ => crate::Key::Text(text).to_owned_key(),
    }
}

/// `limiter` with the configured failure mode, if any (it applies once the limiter is shared).
fn lease_failure(limiter: ConcurrencyLimiter, mode: Option<FailureModeConfig>) -> ConcurrencyLimiter {
    match mode {
        Some(mode) => limiter.failure_mode(mode.into()),
        None => limiter,
    }
}

/// The methods of `routes[route]`, upper-cased (`get` is `GET`).
fn methods(names: &[String], route: usize) -> Result<Vec<Method>, Error> {
    names
        .iter()
        .map(|m| {
            Method::from_str(&m.to_ascii_uppercase())
                .map_err(|_| Error::config(format!("routes[{route}].methods"), format!("{m:?}"), "not an HTTP method"))
        })
        .collect()
}

/// The limits of one `[[routes]]` or `[[websocket]]` entry, built ([`Config::route_limits_with`]):
/// what an adapter applies to the requests of that route, in this order — `policy` (cost 1),
/// `max_body` (413), `body_bytes` (cost: the body's length; 429), then the concurrency leases
/// (`in_flight` for the request's duration, `websocket` connections for the socket's life), the
/// leases and the per-key message limits counted by `key`. Framework-free: adapters only map it
/// to their own types.
///
/// Generated policies and limiters are named after what they limit and the entry's path
/// (`body_bytes:/api/echo`, `ws_connections:/ws`, `ws_open:/ws`, `in_flight:/api`): the name is
/// shown in refusal bodies, and distinct entries keep distinct state in a shared store.
#[non_exhaustive]
pub struct RouteLimits<S: Store = MemoryStore> {
    /// The route, as the router matches it (e.g. `/users/{id}`).
    pub path: String,
    /// The methods it applies to; all when empty (`GET` for a WebSocket endpoint).
    pub methods: Vec<Method>,
    /// Checked with cost 1 for each request; for a WebSocket endpoint, the connection rate
    /// (`connections`) checked on the upgrade request.
    pub policy: Option<Policy<S>>,
    /// The largest request body in bytes (413 above it).
    pub max_body: Option<u64>,
    /// Request body bytes per period per key (429 above it).
    pub body_bytes: Option<Policy<S>>,
    /// Requests in flight per key: a lease held until the response is finished.
    pub in_flight: Option<ConcurrencyLimiter>,
    /// What the entry's per-key limits count by (its `key`, default `ip`): the body bytes and
    /// connection-rate policies, the concurrency leases and the per-key message limits.
    pub key: KeyKind,
    /// A WebSocket endpoint's connection and message limits.
    pub websocket: Option<WebSocketRouteLimits>,
}

/// The WebSocket limits of a `[[websocket]]` entry.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebSocketRouteLimits {
    /// Open connections per key and globally; the lease lives as long as the socket (429 when
    /// the key holds its maximum, 503 when the global cap is full).
    pub connections: ConcurrencyLimiter,
    /// The limits on each connection's messages, and on each key's across its connections.
    pub messages: MessageLimits,
}

impl<S: Store> RouteLimits<S> {
    /// Counts the entry's concurrency leases (in-flight requests, WebSocket connections) in
    /// `store`, shared by every instance using it (see [`ConcurrencyLimiter::shared`]); adapters
    /// then take them asynchronously.
    #[must_use]
    pub fn share_leases<L: LeaseStore + Clone>(mut self, store: &L) -> Self {
        self.in_flight = self.in_flight.map(|l| l.shared(store.clone()));
        if let Some(ws) = &mut self.websocket {
            ws.connections = ws.connections.clone().shared(store.clone());
        }
        self
    }
}

impl<S: Store> Clone for RouteLimits<S> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            methods: self.methods.clone(),
            policy: self.policy.clone(),
            max_body: self.max_body,
            body_bytes: self.body_bytes.clone(),
            in_flight: self.in_flight.clone(),
            key: self.key.clone(),
            websocket: self.websocket.clone(),
        }
    }
}

impl<S: Store> std::fmt::Debug for RouteLimits<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimits")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("policy", &self.policy)
            .field("max_body", &self.max_body)
            .field("body_bytes", &self.body_bytes)
            .field("in_flight", &self.in_flight)
            .field("key", &self.key)
            .field("websocket", &self.websocket)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concurrency::AdaptiveAlgorithm;

    fn err(text: &str) -> String {
        text.parse::<Config>().expect_err(text).to_string()
    }

    #[test]
    fn errors_name_the_field_and_value() {
        assert!(err("[policies.p]\nlimits = []").contains("policies.p.limits"));
        let e = err("[policies.p]\nlimits = [{ name = \"x\", quota = \"5/s\", key = \"cookie\" }]");
        assert!(e.contains("policies.p.limits[0].key") && e.contains("cookie"), "{e}");
        let e = err("[[routes]]\npath = \"/\"\npolicy = \"nope\"");
        assert!(e.contains("routes[0].policy") && e.contains("nope"), "{e}");
        let e = err("[store]\nkind = \"memory\"\nflavour = 1");
        assert!(e.contains("flavour"), "unknown fields are errors: {e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nmax_message = \"16KiZ\"");
        assert!(e.contains("KiZ"), "{e}");
        let e = err("[[routes]]\nmax_body = \"1KiB\"");
        assert!(e.contains("path"), "missing fields are errors: {e}");
        let e = err("[policies.p]\nlimits = [{ name = \"a\", quota = \"1/s\" }, { name = \"a\", quota = \"2/s\" }]");
        assert!(e.contains("unique"), "{e}");
    }

    #[test]
    fn adaptive_limits_reach_routes_and_websocket_endpoints() {
        let config: Config = "[[routes]]\npath = \"/search\"\nconcurrent_per_key = 2\n\
             adaptive = { min = 2, max = 50, tolerance = 1.5, probe_every = \"30s\" }\n\
             [[websocket]]\npath = \"/ws\"\nadaptive = { algorithm = \"aimd\", latency_threshold = \"250ms\", initial = 8 }"
            .parse()
            .unwrap();
        let limits = config.route_limits_with(&MemoryStore::default()).unwrap();
        let search = limits[0].in_flight.as_ref().unwrap();
        assert_eq!(search.per_key_cap(), Some(2));
        let settings = *search.adaptive_limit().unwrap().settings();
        assert_eq!((settings.min, settings.max, settings.initial), (2, 50, 20));
        assert_eq!(
            settings.algorithm,
            AdaptiveAlgorithm::Gradient { tolerance: 1.5, probe_every: Duration::from_secs(30) }
        );
        let ws = limits[1].websocket.as_ref().unwrap().connections.adaptive_limit().unwrap();
        assert_eq!(
            ws.settings().algorithm,
            AdaptiveAlgorithm::Aimd { latency_threshold: Duration::from_millis(250), increase: 1 }
        );
        assert_eq!(ws.current(), 8);

        let e = err("[[routes]]\npath = \"/\"\nadaptive = { algorithm = \"aimd\" }");
        assert!(e.contains("routes[0].adaptive.latency_threshold"), "{e}");
        let e = err("[[routes]]\npath = \"/\"\nadaptive = { tolerance = 0.5 }");
        assert!(e.contains("routes[0].adaptive.tolerance") && e.contains("0.5"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nadaptive = { latency_threshold = \"1s\" }");
        assert!(e.contains("websocket[0].adaptive.latency_threshold") && e.contains("aimd"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nadaptive = { min = 10, max = 5 }");
        assert!(e.contains("websocket[0].adaptive.max"), "{e}");
        let e = err("[[routes]]\npath = \"/\"\nadaptive = { algorithm = \"pid\" }");
        assert!(e.contains("pid"), "{e}");
    }

    #[test]
    fn lease_failure_modes_reach_the_limiters() {
        let config: Config = "[[routes]]\npath = \"/a\"\nconcurrent_per_key = 2\nlease_failure_mode = \"closed\"\n\
             [[websocket]]\npath = \"/ws\"\nconcurrent_per_key = 3\nlease_failure_mode = \"open\"\n\
             [[websocket]]\npath = \"/ws2\"\nconcurrent_per_key = 3"
            .parse()
            .unwrap();
        let limits = config.route_limits_with(&MemoryStore::default()).unwrap();
        let debug = |l: &ConcurrencyLimiter| format!("{l:?}");
        assert!(debug(limits[0].in_flight.as_ref().unwrap()).contains("Closed"));
        assert!(debug(&limits[1].websocket.as_ref().unwrap().connections).contains("Open"));
        assert!(debug(&limits[2].websocket.as_ref().unwrap().connections).contains("Fallback"), "the default");
        let e = err("[[routes]]\npath = \"/\"\nlease_failure_mode = \"sometimes\"");
        assert!(e.contains("sometimes") && e.contains("lease_failure_mode"), "{e}");
        // Set where there is no lease to fail: an error rather than a setting that does nothing.
        let e = err("[[routes]]\npath = \"/\"\nlease_failure_mode = \"closed\"");
        assert!(e.contains("routes[0].lease_failure_mode") && e.contains("concurrent_per_key"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nmessages = \"5/s\"\nlease_failure_mode = \"open\"");
        assert!(e.contains("websocket[0].lease_failure_mode"), "{e}");
    }

    #[test]
    fn route_paths_are_patterns_the_engine_can_match() {
        let err = |text: &str| text.parse::<Config>().unwrap_err().to_string();
        assert!(err("[[routes]]\npath = \"/a/{id\"").contains("routes[0].path"));
        assert!("[[routes]]\npath = \"checkout\"".parse::<Config>().is_ok(), "a route name");
        let conflict = "[[routes]]\npath = \"/a/{x}\"\n[[websocket]]\npath = \"/a/{y}\"";
        assert!(err(conflict).contains("websocket[0].path"), "{}", err(conflict));
        let same =
            "[[routes]]\npath = \"/a/{x}\"\nmethods = [\"POST\"]\n[[routes]]\npath = \"/a/{x}\"\nmethods = [\"PUT\"]";
        assert!(same.parse::<Config>().is_ok());
    }

    #[test]
    fn store_on_full_admits_or_refuses_untracked_keys() {
        use crate::{KeyKind, Reason, RequestKeys};
        let decide = |on_full: &str| {
            let config: Config = format!(
                "[store]\nmax_keys = 1\n{on_full}\n[policies.p]\nlimits = [{{ name = \"l\", quota = \"1/h\", key = \"ip\" }}]"
            )
            .parse()
            .unwrap();
            let policy = &config.policies().unwrap()["p"];
            assert_eq!(policy.limits().next().unwrap().key_kind(), &KeyKind::ip());
            // Fill every shard's places with busy keys, then ask for new ones.
            let mut reasons = Vec::new();
            for n in 0..2000u32 {
                let keys = RequestKeys { ip: Some(std::net::Ipv4Addr::from(n).into()), ..RequestKeys::default() };
                reasons.push(policy.try_check_now(&keys, 1).unwrap().unwrap().reason);
            }
            reasons
        };
        let denied = decide("on_full = \"deny\"");
        assert!(denied.contains(&Reason::KeyTableFull), "a full table refuses new keys with their own outcome");
        assert!(!denied.contains(&Reason::RateLimited), "no new key broke a limit");
        assert_eq!(
            decide("").iter().filter(|r| **r == Reason::KeyTableFull).count(),
            denied.iter().filter(|r| **r == Reason::KeyTableFull).count(),
            "deny is the default"
        );
        let admitted = decide("on_full = \"allow\"");
        assert!(admitted.iter().all(|r| *r == Reason::Allowed), "allow admits untracked keys");
        assert!("[store]\non_full = \"maybe\"".parse::<Config>().unwrap_err().to_string().contains("maybe"));
    }

    #[test]
    fn the_concurrency_tables_follow_store_max_keys() {
        let text = |max_keys: &str| {
            format!(
                "[store]\n{max_keys}\n[[routes]]\npath = \"/api\"\nconcurrent_per_key = 1\n\
                 [[websocket]]\npath = \"/ws\"\nconcurrent_per_key = 1\n"
            )
        };
        // Leases held by 1,000 distinct keys at once: a bounded table refuses most of them.
        let held = |config: &Config| {
            let routes = config.route_limits().unwrap();
            let in_flight = routes[0].in_flight.clone().unwrap();
            let sockets = routes[1].websocket.as_ref().unwrap().connections.clone();
            let mut leases = Vec::new();
            let mut counts = [0; 2];
            for (n, limiter) in [in_flight, sockets].iter().enumerate() {
                for key in 0..1000u64 {
                    if let Ok(lease) = limiter.try_acquire(crate::Key::Int(key)) {
                        leases.push(lease);
                        counts[n] += 1;
                    }
                }
                assert!(limiter.key_capacity() >= 100);
            }
            counts
        };
        let bounded: Config = text("max_keys = 100").parse().unwrap();
        let [a, b] = held(&bounded);
        assert!((100..=300).contains(&a) && (100..=300).contains(&b), "max_keys = 100 tracked {a} and {b} keys");
        let unbounded: Config = text("").parse().unwrap();
        assert_eq!(held(&unbounded), [1000, 1000]);
    }

    #[test]
    fn route_and_websocket_errors_name_the_field() {
        let e = err("[[routes]]\npath = \"/\"\nmethods = [\"GET\", \"NOT A METHOD\"]");
        assert!(e.contains("routes[0].methods") && e.contains("NOT A METHOD"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nkinds = [{ name = \"catch_up\", equals = \"catch_up\" }]");
        assert!(e.contains("websocket[0].kinds[0]") && e.contains("catch_up"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nkey_messages = \"5/fortnight\"");
        assert!(e.contains("key_messages") && e.contains("5/fortnight"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nkey_bytes = \"1MiZ/min\"");
        assert!(e.contains("key_bytes") && e.contains("1MiZ"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\nkey_msgs = \"5/s\"");
        assert!(e.contains("key_msgs"), "unknown fields are errors: {e}");
        // A path's WebSocket entry and a route entry for its GETs: one of them would never apply.
        let e = err("[[routes]]\npath = \"/ws\"\n[[websocket]]\npath = \"/ws\"\nconcurrent_per_key = 1");
        assert!(e.contains("websocket[0].path") && e.contains("routes[0]"), "{e}");
        let e = err("[[routes]]\npath = \"/ws\"\nmethods = [\"get\"]\n[[websocket]]\npath = \"/ws\"");
        assert!(e.contains("websocket[0].path"), "{e}");
        let e = err("[[websocket]]\npath = \"/ws\"\n[[websocket]]\npath = \"/ws\"");
        assert!(e.contains("websocket[1].path"), "{e}");
        let other_methods = "[[routes]]\npath = \"/ws\"\nmethods = [\"POST\"]\n[[websocket]]\npath = \"/ws\"";
        assert!(other_methods.parse::<Config>().is_ok(), "POST and the upgrade's GET do not meet");
    }

    #[test]
    fn route_limits_carry_their_keys_and_per_key_message_limits() {
        let c: Config = r#"
            [store]
            max_keys = 5000
            [policies.per_ip]
            limits = [{ name = "per_ip", quota = "5/s", key = "ip" }]
            [[routes]]
            path = "/api/echo"
            methods = ["post", "PUT"]
            policy = "per_ip"
            max_body = "64KiB"
            body_bytes = "1MiB/min"
            key = "identity"
            concurrent_per_key = 2
            [[websocket]]
            path = "/ws"
            key = "header:x-client"
            connections = "10/min"
            concurrent_per_key = 3
            concurrent_global = 100
            messages = "20/10s"
            key_messages = "40/10s"
            key_bytes = "1MiB/min"
            kinds = [
              { name = "catch_up", equals = "catch_up", quota = "2/min", key_quota = "3/min" },
              { name = "resync", equals = "resync", key_quota = "1/min" },
            ]
        "#
        .parse()
        .unwrap();
        let routes = c.route_limits().unwrap();
        assert_eq!(routes.len(), 2);
        let echo = &routes[0];
        assert_eq!((echo.path.as_str(), echo.methods.as_slice()), ("/api/echo", &[Method::POST, Method::PUT][..]));
        assert_eq!(echo.policy.as_ref().map(Policy::name), Some("per_ip"));
        assert_eq!(echo.max_body, Some(65_536));
        assert_eq!(echo.body_bytes.as_ref().map(Policy::name), Some("body_bytes:/api/echo"));
        let body_limit = echo.body_bytes.as_ref().and_then(|p| p.limits().next()).unwrap();
        assert_eq!(body_limit.key_kind(), &KeyKind::identity());
        assert_eq!(echo.key, KeyKind::identity());
        let in_flight = echo.in_flight.as_ref().unwrap();
        assert!(in_flight.try_acquire(crate::Key::Int(1)).is_ok());
        assert!(echo.websocket.is_none());

        let ws = &routes[1];
        assert_eq!((ws.path.as_str(), ws.methods.as_slice()), ("/ws", &[Method::GET][..]));
        let header = KeyKind::Header(HeaderName::from_static("x-client"));
        assert_eq!(ws.key, header);
        let rate = ws.policy.as_ref().unwrap();
        assert_eq!(rate.name(), "ws_connections:/ws");
        assert_eq!(rate.limits().next().unwrap().key_kind(), &header);
        let limits = ws.websocket.as_ref().unwrap();
        let _a = limits.connections.try_acquire(crate::Key::Int(1)).unwrap();
        let _b = limits.connections.try_acquire(crate::Key::Int(1)).unwrap();
        let _c = limits.connections.try_acquire(crate::Key::Int(1)).unwrap();
        assert!(limits.connections.try_acquire(crate::Key::Int(1)).is_err(), "concurrent_per_key = 3");
        let m = &limits.messages;
        assert_eq!(m.messages, Some("20/10s".parse().unwrap()));
        assert_eq!(m.kinds.len(), 1, "resync has no per-connection quota");
        let per_key = m.per_key.as_ref().unwrap();
        assert_eq!(per_key.messages, Some("40/10s".parse().unwrap()));
        assert_eq!(per_key.bytes, Some("1MiB/min".parse().unwrap()));
        let kinds: Vec<_> = per_key.kinds.iter().map(|k| (k.kind.as_str(), k.quota)).collect();
        assert_eq!(kinds, [("catch_up", "3/min".parse().unwrap()), ("resync", "1/min".parse().unwrap())]);
        assert_eq!(per_key.key_capacity(), 5000, "store.max_keys applies to the per-key state");
    }

    #[test]
    fn forwarding_headers_default_to_x_forwarded_for_and_can_be_named() {
        use http::HeaderMap;
        let peer: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", "for=192.0.2.1".parse().unwrap());
        headers.insert("x-forwarded-for", "192.0.2.2".parse().unwrap());
        let c: Config = r#"trusted_proxies = ["10.0.0.0/8"]"#.parse().unwrap();
        assert_eq!(c.forwarding_headers, [ForwardingHeader::XForwardedFor]);
        assert_eq!(Config::default().forwarding_headers, c.forwarding_headers);
        assert_eq!(c.client_ip_resolver().resolve(peer, &headers), "192.0.2.2".parse::<std::net::IpAddr>().unwrap());
        let c: Config = r#"
            trusted_proxies = ["10.0.0.0/8"]
            forwarding_headers = ["forwarded", "x-real-ip"]
        "#
        .parse()
        .unwrap();
        assert_eq!(c.forwarding_headers, [ForwardingHeader::Forwarded, ForwardingHeader::XRealIp]);
        assert_eq!(c.client_ip_resolver().resolve(peer, &headers), "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
        let bad = r#"forwarding_headers = ["x-client-ip"]"#.parse::<Config>().unwrap_err().to_string();
        assert!(bad.contains("x-client-ip"), "{bad}");
    }

    #[test]
    fn reads_a_full_file() {
        let c: Config = r#"
            trusted_proxies = ["10.0.0.0/8"]
            [headers]
            ietf = true
            reset = "epoch_seconds"
            [store]
            max_keys = 1000
            [policies.api]
            penalty = "30s"
            failure_mode = "fallback"
            allow = ["127.0.0.1", "admin"]
            deny = ["192.0.2.0/24"]
            limits = [
              { name = "per_user", quota = "100/min", key = "identity", tiers = { pro = "1000/min" } },
              { name = "per_key", quota = "10/s", key = "header:x-api-key", algorithm = "sliding_window", on_exceed = "delay", max_delay = "500ms" },
            ]
        "#
        .parse()
        .unwrap();
        assert!(c.headers.ietf);
        let p = c.policies().unwrap();
        assert_eq!(p["api"].limits().count(), 2);
    }
}
