//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::Message;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use tollgate::config::{Config, StoreKind};
use tollgate::{Error, MemoryStore, Store};
use tollgate_redis::RedisStore;
use tollgate_tower::{LimitedUpgrade, RateLimitLayer};

/// The built-in limits, shared with the other demos.
pub const DEFAULT_CONFIG: &str = include_str!("../../demo-config.toml");

/// The in-memory store, honouring `store.max_keys`.
pub fn build_store(config: &Config) -> MemoryStore {
    config.memory_store()
}

/// The Redis URL to use, if any: `redis_url` (from the `REDIS_URL` environment variable) wins
/// over `[store] kind = "redis"` with its `url`.
pub fn redis_url(config: &Config, redis_url: Option<String>) -> Option<String> {
    redis_url
        .filter(|u| !u.is_empty())
        .or_else(|| (config.store.kind == StoreKind::Redis).then(|| config.store.url.first().cloned()).flatten())
}

/// Connects to Redis at `url` with the `[store]` options (prefix, timeout); fails, naming the URL,
/// when Redis cannot be reached.
pub async fn build_redis_store(config: &Config, url: &str) -> Result<RedisStore, tollgate_redis::Error> {
    let mut builder = RedisStore::builder(url).prefix(config.store.prefix.as_deref().unwrap_or("tollgate-demo"));
    if let Some(t) = config.store.timeout {
        builder = builder.timeout(t.0);
    }
    builder.build().await
}

/// The demo's routes with the limits of `config`, on the in-memory store.
pub fn app(config: &Config) -> Result<Router, Error> {
    app_with(config, &build_store(config))
}

/// The demo's routes with the limits of `config`, on `store` (e.g. a [`RedisStore`], so that
/// several instances share their limits).
pub fn app_with<S: Store + Clone>(config: &Config, store: &S) -> Result<Router, Error> {
    Ok(routes().layer(RateLimitLayer::from_config_with(config, store)?.axum_body()))
}

/// The demo's routes with the limits of `config`, all of their state in Redis: the rate limits,
/// and the concurrency leases (open WebSocket connections), so that several instances share one
/// `concurrent_per_key`.
pub fn app_with_redis(config: &Config, store: &RedisStore) -> Result<Router, Error> {
    Ok(routes().layer(RateLimitLayer::from_config_with_leases(config, store, store)?.axum_body()))
}

/// The demo's routes, unlimited (the benchmark's baseline).
pub fn routes() -> Router {
    Router::new().route("/api/hello", get(hello)).route("/api/echo", post(echo)).route("/ws", get(ws))
}

async fn hello() -> &'static str {
    "hello"
}

async fn echo(body: Bytes) -> Bytes {
    body
}

async fn ws(upgrade: LimitedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            if matches!(message, Message::Text(_) | Message::Binary(_)) && socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// `app` with `GET /metrics`: the metrics `recorder` holds (tollgate's among them, see
/// `tollgate::observe`) in Prometheus's text format. The route is added outside the limits.
pub fn with_metrics(app: Router, recorder: PrometheusHandle) -> Router {
    app.route("/metrics", get(move || std::future::ready(recorder.render())))
}

/// Serves `app` on `listener` with the peer address available to the limits.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}
