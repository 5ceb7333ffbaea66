//! The server loop: warp 0.4's own (hyper's HTTP/1 and HTTP/2 with upgrades, a task per
//! connection), around a [`RateLimitService`](crate::RateLimitService) instead of a filter, with
//! the peer's address in every request's extensions.
//!
//! `warp::serve` takes a filter only, and a filter cannot see the request body a later filter
//! reads nor the response body it returns; the limits need both (a body counted while it
//! streams, an in-flight lease held until the response body ends), so the application's filter
//! is turned into a service (`warp::service`) and the limits wrap that.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::rate_limit::BoxError;

/// Serves `service` (e.g. [`RateLimit::service`](crate::RateLimit::service)'s) on `listener`
/// until the process ends, each request carrying its peer's [`SocketAddr`] in its extensions
/// (the limits' client IP; [`remote`](crate::remote) in a filter).
///
/// ```no_run
/// use warp::Filter;
///
/// # async fn run(policy: tollgate::Policy) -> std::io::Result<()> {
/// let routes = warp::path("hello").map(|| "hello");
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3030").await?;
/// tollgate_warp::serve(listener, tollgate_warp::RateLimit::new(policy).service(routes)).await
/// # }
/// ```
pub async fn serve<S, B>(listener: TcpListener, service: S) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let Some((stream, peer)) = accept(&listener).await else { continue };
        tokio::spawn(connection(stream, peer, service.clone()));
    }
}

/// [`serve`] until `signal` completes, then stops accepting and waits for the open connections
/// to finish their requests.
pub async fn serve_with_shutdown<S, B>(
    listener: TcpListener,
    service: S,
    signal: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let accepted = match future::select(std::pin::pin!(accept(&listener)), &mut signal).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(((), _)) => break,
        };
        let Some((stream, peer)) = accepted else { continue };
        let builder = Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service(service.clone(), peer));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The next connection; `None` after an error that the loop outlives (a connection reset
/// before it was accepted, or a full file table, after a pause as warp does).
async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(err) => {
            if !matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
            ) {
                tracing::error!(error = %err, "accept error");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None
        }
    }
}

async fn connection<S, B>(stream: TcpStream, peer: SocketAddr, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = Builder::new(TokioExecutor::new());
    if let Err(err) = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service(service, peer)).await {
        tracing::debug!(error = %err, "connection error");
    }
}

fn hyper_service<S>(service: S, peer: SocketAddr) -> TowerToHyperService<WithPeer<S>> {
    TowerToHyperService::new(WithPeer { inner: service, peer })
}

/// Puts the peer's address in each request's extensions.
#[derive(Clone, Debug)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}
