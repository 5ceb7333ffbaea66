//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use actix_ws::Message;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tollgate::config::{Config, StoreKind};
use tollgate::{Error, MemoryStore, Store};
use tollgate_actix::RateLimit;
use tollgate_redis::RedisStore;

/// The built-in limits, shared with the other demos.
pub const DEFAULT_CONFIG: &str = include_str!("../../demo-config.toml");

/// The worker threads the demo runs: they share one limiter (built before `HttpServer::new`).
pub const WORKERS: usize = 2;

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

/// The limits of `config`, on the in-memory store.
pub fn limits(config: &Config) -> Result<RateLimit, Error> {
    limits_with(config, &build_store(config))
}

/// The limits of `config`, on `store` (e.g. a [`RedisStore`], so that several instances share
/// their limits).
pub fn limits_with<S: Store + Clone>(config: &Config, store: &S) -> Result<RateLimit<S>, Error> {
    RateLimit::from_config_with(config, store)
}

/// The limits of `config`, all of their state in Redis: the rate limits, and the concurrency
/// leases (open WebSocket connections), so that several instances share one `concurrent_per_key`.
pub fn limits_with_redis(config: &Config, store: &RedisStore) -> Result<RateLimit<RedisStore>, Error> {
    RateLimit::from_config_with_leases(config, store, store)
}

/// The demo's routes (`GET /api/hello`, `POST /api/echo`, `GET /ws`), unlimited.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/hello", web::get().to(hello))
        .route("/api/hello", web::head().to(hello))
        .route("/api/echo", web::post().to(echo))
        .route("/ws", web::get().to(ws));
}

/// Serves the demo on `listener` with `workers` workers: its routes behind `limit` (one limiter,
/// shared by every worker), and `GET /metrics` outside the limits when a `recorder` is given.
pub fn serve<S: Store + Clone>(
    listener: TcpListener,
    limit: RateLimit<S>,
    recorder: Option<PrometheusHandle>,
    workers: usize,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        let recorder = recorder.clone();
        let mut app = App::new();
        if let Some(recorder) = recorder {
            app = app.route("/metrics", web::get().to(move || std::future::ready(recorder.render())));
        }
        app.service(web::scope("").wrap(limit.clone()).configure(routes))
    })
    .workers(workers)
    .listen(listener)?
    .run();
    Ok(server)
}

async fn hello() -> &'static str {
    "hello"
}

async fn echo(body: Bytes) -> Bytes {
    body
}

/// A WebSocket echo of text and binary messages, its messages limited by the route's limits.
async fn ws(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = tollgate_actix::ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = messages.recv().await {
            let sent = match message {
                Message::Text(text) => session.text(text).await,
                Message::Binary(bytes) => session.binary(bytes).await,
                Message::Ping(bytes) => session.pong(&bytes).await,
                Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}
