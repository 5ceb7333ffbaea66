//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::Message;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate::config::{Config, StoreKind};
use tollgate::stats::{Sampler, StatsAccess, dashboard};
use tollgate::{Error, MemoryStore, Store};
use tollgate_redis::RedisStore;
use tollgate_tower::{LimitedUpgrade, LiveEngine, RateLimitLayer};
use tower::ServiceExt;

#[path = "../../server_options.rs"]
mod server_options;

#[path = "../../live_config.rs"]
mod live_config;

#[path = "../../simulated_service.rs"]
mod simulated_service;

pub use live_config::{Reload, log_to_stderr};
pub use server_options::ServerOptions;
pub use simulated_service::Workers;

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
    Ok(limited(RateLimitLayer::from_config_with(config, store)?))
}

/// The demo's routes with the limits of `config`, all of their state in Redis: the rate limits,
/// and the concurrency leases (open WebSocket connections), so that several instances share one
/// `concurrent_per_key`.
pub fn app_with_redis(config: &Config, store: &RedisStore) -> Result<Router, Error> {
    Ok(limited(RateLimitLayer::from_config_with_leases(config, store, store)?))
}

/// The demo's routes with the limits of `live`, which can change while it serves (see
/// [`Reload`]): the demo binary's app, on whichever store `live` was built.
pub fn app_live<S: Store + Clone>(live: LiveEngine<S>) -> Router {
    limited(RateLimitLayer::with_engine(live))
}

/// The demo's routes behind `layer`, and beside them, outside the limits, the stats of its
/// engine: `GET /stats`, `GET /stats/events` and `GET /dashboard` (see [`stats_routes`]), for
/// loopback clients and the holders of `TOLLGATE_STATS_TOKEN`.
fn limited<S: Store + Clone>(layer: RateLimitLayer<S>) -> Router {
    // The engine deciding now, at each sample: a live engine's current one.
    let deciding = layer.clone();
    let sampler = Arc::new(Sampler::new(move || deciding.engine().stats()));
    routes().layer(layer.axum_body()).merge(stats_routes(sampler, stats_access_from_env()))
}

/// Who may see the stats: loopback clients, and anyone presenting the token in
/// `TOLLGATE_STATS_TOKEN` (when set and not empty).
pub fn stats_access_from_env() -> StatsAccess {
    StatsAccess::loopback().token(std::env::var("TOLLGATE_STATS_TOKEN").unwrap_or_default())
}

/// `GET /stats` (the snapshot as JSON), `GET /stats/events` (a server-sent event with a new
/// one each second) and `GET /dashboard` (the live page that reads them), from `sampler`, for
/// the clients `access` permits (403 for others). Add them outside the rate limits.
pub fn stats_routes(sampler: Arc<Sampler>, access: StatsAccess) -> Router {
    Router::new()
        .route("/stats", get(stats_json))
        .route("/stats/events", get(stats_events))
        .route("/dashboard", get(dashboard))
        .with_state(Arc::new(StatsState { sampler, access }))
}

struct StatsState {
    sampler: Arc<Sampler>,
    access: StatsAccess,
}

impl StatsState {
    /// 403 unless `request` may see the stats; the peer address is the connection's.
    fn refusal(&self, request: &Request) -> Option<Response> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if self.access.permits(peer, request.headers(), request.uri().query()) {
            return None;
        }
        let json = [(CONTENT_TYPE, dashboard::JSON_CONTENT_TYPE)];
        Some((StatusCode::FORBIDDEN, json, self.access.refusal_body()).into_response())
    }
}

async fn stats_json(State(stats): State<Arc<StatsState>>, request: Request) -> Response {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    let headers = [(CONTENT_TYPE, dashboard::JSON_CONTENT_TYPE), (CACHE_CONTROL, "no-store")];
    (headers, stats.sampler.sample().json().to_owned()).into_response()
}

async fn stats_events(State(stats): State<Arc<StatsState>>, request: Request) -> Response {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    // A sample each second for as long as the page listens; nothing when no page does.
    let sampler = Arc::clone(&stats.sampler);
    let mut ticks = tokio::time::interval(dashboard::EVENT_INTERVAL);
    let events = futures_util::stream::poll_fn(move |cx| {
        ticks.poll_tick(cx).map(|_| Some(Ok::<_, Infallible>(Bytes::from(sampler.sample().sse_event()))))
    });
    let headers = [(CONTENT_TYPE, dashboard::EVENTS_CONTENT_TYPE), (CACHE_CONTROL, "no-store")];
    (headers, Body::from_stream(events)).into_response()
}

async fn dashboard(State(stats): State<Arc<StatsState>>, request: Request) -> Response {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    ([(CONTENT_TYPE, dashboard::CONTENT_TYPE), (CACHE_CONTROL, "no-store")], dashboard::HTML).into_response()
}

/// The demo's routes, unlimited (the benchmark's baseline): `GET /api/hello`, `POST /api/echo`,
/// `GET /api/work` (the [simulated service](Workers)) and `GET /ws` (WebSocket echo).
pub fn routes() -> Router {
    Router::new()
        .route("/api/hello", get(hello))
        .route("/api/echo", post(echo))
        .route("/api/work", get(|| Workers::get().work()))
        .route("/ws", get(ws))
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

/// Serves `app` on `listener` with the peer address available to the limits, with the default
/// [`ServerOptions`].
pub async fn serve(listener: TcpListener, app: Router) -> io::Result<()> {
    serve_with(listener, app, ServerOptions::default()).await
}

/// Serves `app` on `listener` (HTTP/1.1, with upgrades: the demo's axum has no HTTP/2) with the peer address available to the
/// limits (axum's `ConnectInfo<SocketAddr>`), guarded against slow clients by `options`:
/// hyper's header-read timeout (`axum::serve` sets none, and offers no knob for it), a request
/// timeout around the whole app (408), and a cap on the connections served at once.
pub async fn serve_with(listener: TcpListener, app: Router, options: ServerOptions) -> io::Result<()> {
    // Outside the limits: a request cut off gives its leases back as its future is dropped.
    let app = app.layer(middleware::from_fn_with_state(options.request_timeout, time_limit));
    // hyper's HTTP/1 connection itself, not hyper-util's `auto` one that `axum::serve` uses: that
    // one first reads until it can tell HTTP/1 from HTTP/2, with no timeout, so a connection that
    // sends nothing would never reach the header timer. This one's timer starts as soon as the
    // connection is served, and again after each response, so a connection that sends nothing,
    // or idles between requests, is closed too.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(options.header_timeout);
    let places = Arc::new(Semaphore::new(options.max_connections));
    loop {
        // A free place before the next connection: at the cap, connections wait in the backlog.
        let place = Arc::clone(&places).acquire_owned().await.map_err(io::Error::other)?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // A connection reset before it was accepted is nothing; anything else (a full
                // file table) gets a pause, so that the loop does not spin on it.
                if !matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let service = app.clone().map_request(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            // A connection ends in an error when a timeout closes it: nothing to report.
            let _ =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)).with_upgrades().await;
            drop(place);
        });
    }
}

/// The request timeout: the app's response, or `408 Request Timeout` when it takes longer than
/// the limit (a body trickled slower than that, say).
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        // `Connection: close`: the rest of the body is never read, so the connection cannot carry
        // another request.
        Err(_) => (StatusCode::REQUEST_TIMEOUT, [(CONNECTION, "close")]).into_response(),
    }
}
