//! The server loop: warp 0.4's own (hyper's HTTP/1 and HTTP/2 with upgrades, a task per
//! connection), around a [`RateLimitService`](crate::RateLimitService) instead of a filter, with
//! the peer's address in every request's extensions, and with the guards against slow clients
//! that warp's loop lacks ([`ServeOptions`]).
//!
//! `warp::serve` takes a filter only, and a filter cannot see the request body a later filter
//! reads nor the response body it returns; the limits need both (a body counted while it
//! streams, an in-flight lease held until the response body ends), so the application's filter
//! is turned into a service (`warp::service`) and the limits wrap that.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either};
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either as EitherBody, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::rate_limit::BoxError;

/// How [`serve`] treats slow and idle clients — what a server facing the internet needs besides
/// rate limits, since a client that never finishes its request never reaches them:
///
/// - **Header-read timeout** (default 30 s, hyper's): the longest a client may take to send a
///   request head, counted from the connection's start or from the end of the previous response,
///   so it also closes kept-alive connections idle that long. A head trickled a byte at a time
///   (slow-loris) is cut off when it runs out, and so is a connection that sends nothing. On a
///   connection that speaks HTTP/2 it bounds the wait for the first request; HTTP/2 has no head
///   to trickle, and hyper has no idle timeout for it.
/// - **Request timeout** (default none): the longest from a request's head to its response head,
///   reading the body included, so that a body trickled slower than that is cut off: the client
///   gets `408 Request Timeout` with `Connection: close`, and the rest of the body is not read.
///   None by default because how long a legitimate upload or handler may take is the
///   application's to say; set it unless a proxy in front already does.
/// - **Connection cap** (default none): the most connections served at once; further ones wait in
///   the listener's backlog until one closes, so that slow clients cannot run the process out of
///   file descriptors or memory.
///
/// ```no_run
/// use std::time::Duration;
/// use warp::Filter;
///
/// # async fn run(policy: tollgate::Policy) -> std::io::Result<()> {
/// let routes = warp::path("hello").map(|| "hello");
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3030").await?;
/// tollgate_warp::ServeOptions::new()
///     .header_read_timeout(Some(Duration::from_secs(10)))
///     .request_timeout(Some(Duration::from_secs(30)))
///     .max_connections(Some(10_000))
///     .serve(listener, tollgate_warp::RateLimit::new(policy).service(routes))
///     .await
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    header_read_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    max_connections: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeOptions {
    /// The defaults: a header-read timeout of 30 s, no request timeout, no connection cap.
    pub const fn new() -> Self {
        Self { header_read_timeout: Some(Duration::from_secs(30)), request_timeout: None, max_connections: None }
    }

    /// The longest a client may take to send a request head (and to keep a connection idle
    /// between requests); `None` for no limit.
    #[must_use]
    pub const fn header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The longest from a request's head to its response head, body read included (408 after
    /// it); `None` for no limit.
    #[must_use]
    pub const fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The most connections served at once (at least 1); `None` for no cap.
    #[must_use]
    pub const fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// The header-read timeout.
    pub const fn header_read_timeout_value(&self) -> Option<Duration> {
        self.header_read_timeout
    }

    /// The request timeout.
    pub const fn request_timeout_value(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// The connection cap.
    pub const fn max_connections_value(&self) -> Option<usize> {
        self.max_connections
    }

    /// Serves `service` on `listener` with these options until the process ends; see [`serve`].
    pub async fn serve<S, B>(self, listener: TcpListener, service: S) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, service, future::pending::<()>()).await
    }

    /// [`ServeOptions::serve`] until `signal` completes, then stops accepting and waits for the
    /// open connections to finish their requests; see [`serve_with_shutdown`].
    pub async fn serve_with_shutdown<S, B>(
        self,
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
        let builder = self.builder();
        let slots = self.max_connections.map(|max| Arc::new(Semaphore::new(max.max(1))));
        let graceful = GracefulShutdown::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            let next = async {
                // A free place first, then the connection: at the cap, connections wait in the
                // backlog rather than being accepted and held unserved.
                let permit = match &slots {
                    Some(slots) => Some(Arc::clone(slots).acquire_owned().await.map_err(io::Error::other)?),
                    None => None,
                };
                Ok::<_, io::Error>(accept(&listener).await.map(|accepted| (accepted, permit)))
            };
            let accepted = match future::select(std::pin::pin!(next), &mut signal).await {
                Either::Left((accepted, _)) => accepted?,
                Either::Right(((), _)) => break,
            };
            let Some(((stream, peer), permit)) = accepted else { continue };
            let started = self.header_read_timeout.map(|_| Arc::new(AtomicBool::new(false)));
            let service = WithPeer {
                inner: TimeLimit { inner: service.clone(), limit: self.request_timeout },
                peer,
                started: started.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(connection(conn, self.header_read_timeout.zip(started), permit));
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }

    /// hyper's connection builder: HTTP/1 with the header-read timeout on tokio's timer, and
    /// HTTP/2, with upgrades.
    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout);
        builder
    }
}

/// Serves `service` (e.g. [`RateLimit::service`](crate::RateLimit::service)'s) on `listener`
/// until the process ends, each request carrying its peer's [`SocketAddr`] in its extensions
/// (the limits' client IP; [`remote`](crate::remote) in a filter), with the default
/// [`ServeOptions`] (a header-read timeout of 30 s; set a request timeout and a connection cap
/// through [`ServeOptions::serve`]).
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
    ServeOptions::new().serve(listener, service).await
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
    ServeOptions::new().serve_with_shutdown(listener, service, signal).await
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

/// Runs one connection, holding its place under the connection cap until it ends. With a
/// header-read timeout, a connection that has not begun a request when it runs out is closed:
/// hyper's HTTP/1 timeout starts only once the bytes read tell HTTP/1 from HTTP/2, so without
/// this a connection that sends nothing (or the HTTP/2 preface a byte at a time, or the preface
/// and no request) would be held for ever.
async fn connection<C, E>(
    conn: C,
    first_request: Option<(Duration, Arc<AtomicBool>)>,
    permit: Option<OwnedSemaphorePermit>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let result = match first_request {
        None => conn.await,
        Some((limit, started)) => match tokio::time::timeout(limit, conn.as_mut()).await {
            Ok(result) => result,
            Err(_) if !started.load(Ordering::Relaxed) => {
                tracing::debug!("connection closed: no request within the header-read timeout");
                return;
            }
            Err(_) => conn.await,
        },
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection error");
    }
    drop(permit);
}

/// Puts the peer's address in each request's extensions, and notes that the connection has
/// begun a request.
#[derive(Clone, Debug)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
    started: Option<Arc<AtomicBool>>,
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
        if let Some(started) = &self.started {
            started.store(true, Ordering::Relaxed);
        }
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

/// The request timeout: the inner service's response, or `408` with `Connection: close` when it
/// takes longer than `limit`.
#[derive(Clone, Debug)]
struct TimeLimit<S> {
    inner: S,
    limit: Option<Duration>,
}

/// A response body: the inner service's, or the empty body of a `408`.
type TimeLimitBody<B> = EitherBody<B, Empty<<B as Body>::Data>>;

impl<S, R, B> Service<R> for TimeLimit<S>
where
    S: Service<R, Response = Response<B>>,
    B: Body,
{
    type Response = Response<TimeLimitBody<B>>;
    type Error = S::Error;
    type Future = TimeLimitFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        TimeLimitFuture { inner: self.inner.call(request), deadline: self.limit.map(tokio::time::sleep) }
    }
}

pin_project! {
    /// [`TimeLimit`]'s future: the inner future, raced against the deadline when there is one.
    /// Dropping the inner future on the deadline drops the request body unread (so hyper closes
    /// the connection after the 408) and whatever the request held, its rate-limit leases among
    /// them.
    struct TimeLimitFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
    }
}

impl<F, B, E> Future for TimeLimitFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TimeLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map(|response| response.map(EitherBody::Left)));
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(timed_out())),
            _ => Poll::Pending,
        }
    }
}

/// `408 Request Timeout`, closing the connection: the rest of the request is never read, so the
/// connection cannot carry another one.
fn timed_out<B: Body>() -> Response<TimeLimitBody<B>> {
    let mut response = Response::new(EitherBody::Right(Empty::new()));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warp::Filter;

    use super::*;

    /// A server of `POST /echo` (the body) with `options`; its address.
    async fn server(options: ServeOptions) -> SocketAddr {
        let echo = warp::path("echo").and(warp::body::bytes()).map(|body: bytes::Bytes| body.to_vec());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(options.serve(listener, warp::service(echo)));
        addr
    }

    /// Sends `start`, then a byte every 50 ms, until the server closes the connection: what it
    /// answered, and after how long. Panics after 5 s.
    async fn trickle(addr: SocketAddr, start: &[u8]) -> (String, Duration) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        stream.write_all(start).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while started.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&answer).into_owned(), started.elapsed()),
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                // A failed write is the server gone: the next read says so.
                Err(_) if !start.is_empty() => {
                    let _ = stream.write_all(b"a").await;
                }
                Err(_) => {}
            }
        }
        panic!("still open after 5 s");
    }

    #[tokio::test]
    async fn slow_heads_silent_connections_and_slow_bodies_are_cut_off() {
        let options = ServeOptions::new()
            .header_read_timeout(Some(Duration::from_millis(300)))
            .request_timeout(Some(Duration::from_millis(600)))
            .max_connections(Some(8));
        let addr = server(options).await;
        // A head trickled a byte at a time: closed by hyper's header timer.
        let (answer, after) = trickle(addr, b"POST /echo HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        assert!(answer.is_empty() && after < Duration::from_secs(2), "{answer:?} after {after:?}");
        // Nothing at all (HTTP/1 or HTTP/2 undecided): closed by the first-request deadline.
        let (answer, after) = trickle(addr, b"").await;
        assert!(answer.is_empty() && after < Duration::from_secs(2), "{answer:?} after {after:?}");
        // A body trickled after its head: 408 with Connection: close at the request timeout.
        let (answer, after) = trickle(addr, b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer:?}");
        assert!((Duration::from_millis(500)..Duration::from_secs(2)).contains(&after), "{after:?}");
        // An ordinary request is served.
        let (answer, _) =
            trickle(addr, b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hi"), "{answer:?}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_place() {
        let addr = server(ServeOptions::new().max_connections(Some(1))).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\na").await.unwrap();
        let mut buf = [0u8; 512];
        assert!(first.read(&mut buf).await.unwrap() > 0, "the first connection is served");
        // The second waits in the backlog while the first is open, and is served once it closes.
        let second = tokio::spawn(trickle(
            addr,
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 1\r\n\r\nb",
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second connection was served beside the first");
        drop(first);
        let (answer, _) = second.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
}
