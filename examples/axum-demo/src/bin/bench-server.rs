//! The benchmark's servers: `bench-server http PORT` serves the same minimal axum app sixteen
//! ways on PORT..PORT+15: bare; then, with each middleware inside the router (`Router::layer`),
//! tollgate allow, tollgate refuse, tower_governor allow, tower_governor refuse, a no-op layer,
//! tollgate allow without rate-limit headers, tower_governor allow with its rate-limit headers;
//! then, with the middleware around the router (before routing), tollgate allow, tollgate allow
//! without headers, tower_governor allow, tower_governor allow with headers, tollgate refuse,
//! tower_governor refuse, and a layer that only adds three fixed `X-RateLimit-*` headers (what
//! any limiter's headers cost); last, that layer inside the router. `bench-server ws` measures
//! WebSocket messages per second through a bare and a wrapped socket and prints both. Driven by
//! `bench.sh`.

// A console tool.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
#[path = "../../../../crates/tollgate-tower/benches/apps/mod.rs"]
mod apps;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::Message;
use axum::extract::{Request, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};

use apps::{ALLOW, BoxError, REFUSE, app, fixed_headers, tollgate};
use tollgate::websocket::MessageLimits;
use tollgate::{ConcurrencyLimiter, HeaderOptions};
use tollgate_tower::{LimitedUpgrade, LimitedWebSocket, Limits, RateLimitLayer, WebSocketLimits};
use tower::{Layer, Service};

async fn serve(port: u16, app: Router) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum_demo::serve(listener, app).await });
    Ok(())
}

/// Serves `service` — a middleware around the whole router — with the peer address available.
async fn serve_around<S>(port: u16, service: S) -> Result<(), BoxError>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let make = axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service);
    tokio::spawn(async move { axum::serve(listener, make).await });
    Ok(())
}

async fn http(port: u16) -> Result<(), BoxError> {
    serve(port, app()).await?;
    let (headers, no_headers) = (HeaderOptions::default(), HeaderOptions { x_ratelimit: false, ..Default::default() });
    // Inside the router.
    serve(port + 1, app().layer(tollgate(ALLOW, headers)?)).await?;
    serve(port + 2, app().layer(tollgate(REFUSE, headers)?)).await?;
    serve(port + 3, app().layer(governor!(true)?)).await?;
    serve(port + 4, app().layer(governor!(false)?)).await?;
    // A layer that does nothing: what any tower layer costs through axum's `Router::layer`.
    serve(port + 5, app().layer(tower::util::MapRequestLayer::new(|r: Request| r))).await?;
    // The allow path without headers on allowed responses (tower_governor's default), and
    // tower_governor with them, like for like with tollgate's default.
    serve(port + 6, app().layer(tollgate(ALLOW, no_headers)?)).await?;
    serve(port + 7, app().layer(governor!(true, headers)?)).await?;
    // Around the router.
    serve_around(port + 8, tollgate(ALLOW, headers)?.layer(app())).await?;
    serve_around(port + 9, tollgate(ALLOW, no_headers)?.layer(app())).await?;
    serve_around(port + 10, governor!(true)?.layer(app())).await?;
    serve_around(port + 11, governor!(true, headers)?.layer(app())).await?;
    serve_around(port + 12, tollgate(REFUSE, headers)?.layer(app())).await?;
    serve_around(port + 13, governor!(false)?.layer(app())).await?;
    serve_around(port + 14, fixed_headers().layer(app())).await?;
    // The fixed headers inside the router: what a layer that writes them costs there.
    serve(port + 15, app().layer(fixed_headers())).await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

async fn bare_echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Binary(_)) && socket.send(m).await.is_err() {
                break;
            }
        }
    })
}

async fn limited_echo(upgrade: LimitedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: LimitedWebSocket<_, Message>| async move {
        while let Some(Ok(m)) = socket.next().await {
            if matches!(m, Message::Binary(_)) && socket.send(m).await.is_err() {
                break;
            }
        }
    })
}

/// Messages per second echoed over one connection, `window` in flight at a time.
async fn ws_rate(addr: SocketAddr, messages: usize, window: usize) -> Result<f64, BoxError> {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    let (mut tx, mut rx) = socket.split();
    let payload = tokio_tungstenite::tungstenite::Message::binary(vec![7u8; 64]);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..messages {
            tx.feed(payload.clone()).await?;
        }
        tx.flush().await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    let _ = window;
    let mut got = 0;
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await? {
            Some(Ok(m)) if m.is_binary() => got += 1,
            Some(Ok(_)) => {}
            _ => return Err("the echo stopped".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = sender.await?;
    Ok(messages as f64 / elapsed)
}

async fn ws() -> Result<(), BoxError> {
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare.local_addr()?;
    tokio::spawn(async move { axum_demo::serve(bare, Router::new().route("/ws", get(bare_echo))).await });
    let limits = MessageLimits::new()
        .messages("1000000000/s".parse()?)
        .bytes("1000000000/s".parse()?)
        .max_message_size(16 * 1024);
    let layer = RateLimitLayer::with_limits(
        Limits::new().websocket(WebSocketLimits::new(ConcurrencyLimiter::new("ws").per_key(10), limits)),
    );
    let limited = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let limited_addr = limited.local_addr()?;
    tokio::spawn(
        async move { axum_demo::serve(limited, Router::new().route("/ws", get(limited_echo)).layer(layer)).await },
    );
    let n = 200_000;
    // Warm up, then alternate to even out noise from the shared machine.
    ws_rate(bare_addr, 20_000, 0).await?;
    ws_rate(limited_addr, 20_000, 0).await?;
    let (mut b, mut l) = (0.0, 0.0);
    for _ in 0..3 {
        b += ws_rate(bare_addr, n, 0).await?;
        l += ws_rate(limited_addr, n, 0).await?;
    }
    let (b, l) = (b / 3.0, l / 3.0);
    println!("ws bare: {b:.0} msg/s");
    println!("ws tollgate: {l:.0} msg/s");
    println!("ws ratio tollgate/bare: {:.3}", l / b);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("http") => http(args.next().and_then(|p| p.parse().ok()).unwrap_or(4100)).await,
        Some("ws") => ws().await,
        _ => Err("usage: bench-server http [PORT] | bench-server ws".into()),
    }
}
