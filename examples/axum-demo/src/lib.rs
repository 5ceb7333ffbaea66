//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::Message;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tollgate::config::Config;
use tollgate::{Error, MemoryStore};
use tollgate_tower::{LimitedUpgrade, RateLimitLayer};

/// The built-in limits, shared with the other demos.
pub const DEFAULT_CONFIG: &str = include_str!("../../demo-config.toml");

/// The store the limits live in. Later: a Redis store when `REDIS_URL` is set (the seam for it;
/// the layer is generic over the store, see `RateLimitLayer::from_config_with`).
pub fn build_store(config: &Config) -> MemoryStore {
    let mut store = MemoryStore::builder();
    if let Some(n) = config.store.max_keys {
        store = store.max_keys(n);
    }
    store.build()
}

/// The demo's routes with the limits of `config`.
pub fn app(config: &Config) -> Result<Router, Error> {
    let layer = RateLimitLayer::from_config_with(config, &build_store(config))?;
    Ok(routes().layer(layer))
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

/// Serves `app` on `listener` with the peer address available to the limits.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}
