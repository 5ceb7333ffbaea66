//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, middleware, web};
use actix_ws::Message;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tollgate::config::{Config, StoreKind};
use tollgate::request::RequestHeaders;
use tollgate::stats::{Sampler, StatsAccess, dashboard};
use tollgate::{Error, MemoryStore, Store};
use tollgate_actix::RateLimit;
use tollgate_redis::RedisStore;

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

/// The demo's routes (`GET /api/hello`, `POST /api/echo`, `GET /api/work` — the
/// [simulated service](Workers) — and `GET /ws`), unlimited.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/hello", web::get().to(hello))
        .route("/api/hello", web::head().to(hello))
        .route("/api/echo", web::post().to(echo))
        .route("/api/work", web::get().to(|| Workers::get().work()))
        .route("/ws", web::get().to(ws));
}

/// Serves the demo on `listener` with `workers` workers: its routes behind `limit` (one limiter,
/// shared by every worker), and `GET /metrics` outside the limits when a `recorder` is given;
/// with the default [`ServerOptions`].
pub fn serve<S: Store + Clone>(
    listener: TcpListener,
    limit: RateLimit<S>,
    recorder: Option<PrometheusHandle>,
    workers: usize,
) -> std::io::Result<Server> {
    serve_with(listener, limit, recorder, workers, ServerOptions::default())
}

/// [`serve`], guarded against slow clients by `options` through actix-web's own settings: the
/// header timeout is its `client_request_timeout` (408 to a head not received in time) and its
/// `keep_alive` (an idle connection is closed after it), the request timeout a middleware
/// around everything (actix-web has none for bodies), and the connection cap its per-worker
/// `max_connections`, split between the workers.
///
/// One gap remains, actix-web's own: its head timeout covers the first request of a connection
/// only. Once a kept-alive connection has sent the first byte of its next request, nothing times
/// out the rest of that head; a proxy in front with a header timeout closes it.
pub fn serve_with<S: Store + Clone>(
    listener: TcpListener,
    limit: RateLimit<S>,
    recorder: Option<PrometheusHandle>,
    workers: usize,
    options: ServerOptions,
) -> std::io::Result<Server> {
    let request_timeout = options.request_timeout;
    // One sampler for every worker, so that they share one series of snapshots.
    // The engine deciding now, at each sample: a live engine's current one.
    let deciding = limit.clone();
    let stats = web::Data::new(StatsState {
        sampler: Arc::new(Sampler::new(move || deciding.engine().stats())),
        access: stats_access_from_env(),
    });
    let server = HttpServer::new(move || {
        let recorder = recorder.clone();
        // Outermost: a request cut off gives its leases back as its future is dropped.
        let mut app =
            App::new().wrap(middleware::from_fn(move |request, next| time_limit(request, next, request_timeout)));
        if let Some(recorder) = recorder {
            app = app.route("/metrics", web::get().to(move || std::future::ready(recorder.render())));
        }
        // The stats, outside the limits (registered before the limited scope, which matches all).
        let stats = stats.clone();
        app.configure(move |config| stats_routes(config, stats))
            .service(web::scope("").wrap(limit.clone()).configure(routes))
    })
    .workers(workers)
    .client_request_timeout(options.header_timeout)
    .keep_alive(options.header_timeout)
    .max_connections(options.max_connections.div_ceil(workers.max(1)))
    .listen(listener)?
    .run();
    Ok(server)
}

/// Who may see the stats: loopback clients, and anyone presenting the token in
/// `TOLLGATE_STATS_TOKEN` (when set and not empty).
pub fn stats_access_from_env() -> StatsAccess {
    StatsAccess::loopback().token(std::env::var("TOLLGATE_STATS_TOKEN").unwrap_or_default())
}

/// What the stats routes answer from: the sampler of the limiter's engine, and who may see it.
#[derive(Debug)]
pub struct StatsState {
    /// Snapshots of the limiter's engine.
    pub sampler: Arc<Sampler>,
    /// Who may see them.
    pub access: StatsAccess,
}

/// `GET /stats` (the snapshot as JSON), `GET /stats/events` (a server-sent event with a new
/// one each second) and `GET /dashboard` (the live page that reads them), for the clients
/// `stats.access` permits (403 for others). Register them outside the rate limits.
pub fn stats_routes(config: &mut web::ServiceConfig, stats: web::Data<StatsState>) {
    config
        .app_data(stats)
        .route("/stats", web::get().to(stats_json))
        .route("/stats/events", web::get().to(stats_events))
        .route("/dashboard", web::get().to(dashboard));
}

/// actix-web's headers as the core reads them.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn first(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.0.get(name.as_str()).map(|v| v.as_bytes())
    }

    fn each(&self, name: &http::HeaderName, each: &mut dyn FnMut(&[u8])) {
        self.0.get_all(name.as_str()).for_each(|v| each(v.as_bytes()));
    }
}

impl StatsState {
    /// 403 unless `request` may see the stats; the peer address is the connection's.
    fn refusal(&self, request: &HttpRequest) -> Option<HttpResponse> {
        let peer = request.peer_addr().map(|a| a.ip());
        if self.access.permits(peer, &Headers(request.headers()), Some(request.query_string())) {
            return None;
        }
        Some(HttpResponse::Forbidden().content_type(dashboard::JSON_CONTENT_TYPE).body(self.access.refusal_body()))
    }
}

async fn stats_json(stats: web::Data<StatsState>, request: HttpRequest) -> HttpResponse {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    HttpResponse::Ok()
        .content_type(dashboard::JSON_CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .body(stats.sampler.sample().json().to_owned())
}

async fn stats_events(stats: web::Data<StatsState>, request: HttpRequest) -> HttpResponse {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    // A sample each second for as long as the page listens; nothing when no page does.
    let sampler = Arc::clone(&stats.sampler);
    let mut ticks = actix_web::rt::time::interval(dashboard::EVENT_INTERVAL);
    let events = futures_util::stream::poll_fn(move |cx| {
        ticks.poll_tick(cx).map(|_| Some(Ok::<_, Infallible>(Bytes::from(sampler.sample().sse_event()))))
    });
    HttpResponse::Ok()
        .content_type(dashboard::EVENTS_CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .streaming(events)
}

async fn dashboard(stats: web::Data<StatsState>, request: HttpRequest) -> HttpResponse {
    if let Some(refused) = stats.refusal(&request) {
        return refused;
    }
    HttpResponse::Ok()
        .content_type(dashboard::CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .body(dashboard::HTML)
}

/// The request timeout: the app's response, or [`RequestTimedOut`] when the app takes longer
/// than `limit` — a body trickled slower than that, say.
async fn time_limit(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    limit: std::time::Duration,
) -> actix_web::Result<ServiceResponse<impl MessageBody>> {
    // An error, not a response: a response needs the request, which the app holds (and routing
    // needs it unshared, so it cannot be cloned before).
    actix_web::rt::time::timeout(limit, next.call(request)).await.map_err(|_| RequestTimedOut)?
}

/// A request that took longer than the request timeout: `408 Request Timeout`, closing the
/// connection (the rest of its body is never read, so the connection cannot carry another
/// request).
#[derive(Debug)]
struct RequestTimedOut;

impl std::fmt::Display for RequestTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request took longer than the request timeout")
    }
}

impl ResponseError for RequestTimedOut {
    fn status_code(&self) -> StatusCode {
        StatusCode::REQUEST_TIMEOUT
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::RequestTimeout().force_close().finish()
    }
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
