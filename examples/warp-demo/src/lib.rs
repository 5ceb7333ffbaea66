//! The demo server's application, shared by `main.rs`, the tests and the benchmark.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use metrics_exporter_prometheus::PrometheusHandle;
use tollgate::config::{Config, StoreKind};
use tollgate::stats::{Sampler, StatsAccess, dashboard};
use tollgate::{Error, MemoryStore, Store};
use tollgate_redis::RedisStore;
use tollgate_warp::{LimitedWs, RateLimit, ServeOptions};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

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
/// leases (open WebSocket connections), so that several instances share one
/// `concurrent_per_key`.
pub fn limits_with_redis(config: &Config, store: &RedisStore) -> Result<RateLimit<RedisStore>, Error> {
    RateLimit::from_config_with_leases(config, store, store)
}

/// The demo's routes: `GET /api/hello`, `POST /api/echo`, `GET /api/work` (the
/// [simulated service](Workers)), `GET /ws` (WebSocket echo).
pub fn routes() -> BoxedFilter<(Response,)> {
    let hello = warp::get().and(warp::path!("api" / "hello")).map(|| "hello");
    let work = warp::get().and(warp::path!("api" / "work")).then(|| Workers::get().work());
    let echo = warp::post()
        .and(warp::path!("api" / "echo"))
        .and(warp::body::bytes())
        .map(|body: Bytes| http::Response::new(body));
    let ws = warp::path!("ws").and(tollgate_warp::ws()).map(|ws: LimitedWs| {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                    break;
                }
            }
        })
    });
    hello.or(echo).or(work).or(ws).map(Reply::into_response).boxed()
}

/// `routes` with `GET /metrics`: the metrics `recorder` holds (tollgate's among them, see
/// `tollgate::observe`) in Prometheus's text format. No limit applies to it (it is in no route
/// entry of the configuration).
pub fn with_metrics(routes: BoxedFilter<(Response,)>, recorder: PrometheusHandle) -> BoxedFilter<(Response,)> {
    let metrics = warp::get().and(warp::path!("metrics")).map(move || recorder.render().into_response());
    routes.or(metrics).unify().boxed()
}

/// Serves `routes` behind `limits` on `listener`, with the peer address available to the limits,
/// and the default [`ServerOptions`].
pub async fn serve<St: Store>(
    listener: tokio::net::TcpListener,
    limits: &RateLimit<St>,
    routes: BoxedFilter<(Response,)>,
) -> io::Result<()> {
    serve_with(listener, limits, routes, ServerOptions::default()).await
}

/// [`serve`], guarded against slow clients by `options` through tollgate-warp's server loop
/// ([`ServeOptions`]: hyper's header-read timeout, a request timeout, a connection cap; warp's
/// own loop has none of them).
pub async fn serve_with<St: Store>(
    listener: tokio::net::TcpListener,
    limits: &RateLimit<St>,
    routes: BoxedFilter<(Response,)>,
    options: ServerOptions,
) -> io::Result<()> {
    ServeOptions::new()
        .header_read_timeout(Some(options.header_timeout))
        .request_timeout(Some(options.request_timeout))
        .max_connections(Some(options.max_connections))
        .serve(listener, limits.service(with_stats(routes, limits)))
        .await
}

/// `routes` with the stats of `limits`' engine: `GET /stats`, `GET /stats/events` and
/// `GET /dashboard` (see [`stats_routes`]), for loopback clients and the holders of
/// `TOLLGATE_STATS_TOKEN`. No limit applies to them (they are in no route entry of the
/// configuration, as `/metrics`).
pub fn with_stats<St: Store>(routes: BoxedFilter<(Response,)>, limits: &RateLimit<St>) -> BoxedFilter<(Response,)> {
    // The engine deciding now, at each sample: a live engine's current one.
    let deciding = limits.clone();
    let sampler = Arc::new(Sampler::new(move || deciding.engine().stats()));
    routes.or(stats_routes(sampler, stats_access_from_env())).unify().boxed()
}

/// Who may see the stats: loopback clients, and anyone presenting the token in
/// `TOLLGATE_STATS_TOKEN` (when set and not empty).
pub fn stats_access_from_env() -> StatsAccess {
    StatsAccess::loopback().token(std::env::var("TOLLGATE_STATS_TOKEN").unwrap_or_default())
}

/// `GET /stats` (the snapshot as JSON), `GET /stats/events` (a server-sent event with a new
/// one each second) and `GET /dashboard` (the live page that reads them), from `sampler`, for
/// the clients `access` permits (403 for others; the peer address is the connection's, which
/// tollgate-warp's server puts in each request).
pub fn stats_routes(sampler: Arc<Sampler>, access: StatsAccess) -> BoxedFilter<(Response,)> {
    let access = Arc::new(access);
    let refusal = {
        let access = Arc::clone(&access);
        move || {
            let body = warp::reply::with_header(access.refusal_body(), CONTENT_TYPE, dashboard::JSON_CONTENT_TYPE);
            warp::reply::with_status(body, StatusCode::FORBIDDEN).into_response()
        }
    };
    let query = warp::query::raw().map(Some).or(warp::any().map(|| None)).unify();
    let permitted = tollgate_warp::remote().and(warp::header::headers_cloned()).and(query).map(
        move |peer: Option<SocketAddr>, headers: http::HeaderMap, query: Option<String>| {
            access.permits(peer.map(|p| p.ip()), &headers, query.as_deref())
        },
    );
    let no_store = |reply: Response, content_type: &'static str| {
        let reply = warp::reply::with_header(reply, CONTENT_TYPE, content_type);
        warp::reply::with_header(reply, CACHE_CONTROL, "no-store").into_response()
    };
    let json = {
        let (sampler, refusal) = (Arc::clone(&sampler), refusal.clone());
        warp::get().and(warp::path!("stats")).and(permitted.clone()).map(move |permitted: bool| {
            if !permitted {
                return refusal();
            }
            no_store(sampler.sample().json().to_owned().into_response(), dashboard::JSON_CONTENT_TYPE)
        })
    };
    let events = {
        let refusal = refusal.clone();
        warp::get().and(warp::path!("stats" / "events")).and(permitted.clone()).map(move |permitted: bool| {
            if !permitted {
                return refusal();
            }
            // A sample each second for as long as the page listens; nothing when no page does.
            let sampler = Arc::clone(&sampler);
            let mut ticks = tokio::time::interval(dashboard::EVENT_INTERVAL);
            let events = futures_util::stream::poll_fn(move |cx| {
                ticks.poll_tick(cx).map(|_| Some(Ok::<_, Infallible>(Bytes::from(sampler.sample().sse_event()))))
            });
            no_store(warp::reply::stream(events).into_response(), dashboard::EVENTS_CONTENT_TYPE)
        })
    };
    let page = warp::get().and(warp::path!("dashboard")).and(permitted).map(move |permitted: bool| {
        if !permitted {
            return refusal();
        }
        no_store(dashboard::HTML.into_response(), dashboard::CONTENT_TYPE)
    });
    json.or(events).unify().or(page).unify().boxed()
}
