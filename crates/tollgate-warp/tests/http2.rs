//! Body limits over HTTP/2 on real sockets: [`tollgate_warp::serve`] (hyper-util's auto builder,
//! which speaks HTTP/2 to a client with prior knowledge) and hyper's HTTP/2 client. An HTTP/2
//! request declares no `Content-Length` unless its sender knew the length up front: a GET sends
//! its headers with END_STREAM and nothing else, an upload of unknown length streams DATA frames.
//! Its body's bytes are charged as the filter reads them, never the route's largest body, and it
//! is never refused 411.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tollgate::store::MemoryLimit;
use tollgate::{Check, Key, KeyKind, Limit, LimitSpec, MemoryStore, Policy, Snapshot, Store, StoreError};
use tollgate_warp::{Limits, RateLimit};
use warp::Filter;

fn body_bytes<St: Store>(store: St) -> Policy<St> {
    Policy::builder("body_bytes")
        .limit(Limit::new("body_bytes", "4KiB/day".parse().unwrap()).key(KeyKind::ip()))
        .build_with(store)
        .unwrap()
}

/// `/both`: at most 1 KiB a body and 4 KiB of bodies a day per client; `/bytes`: the 4 KiB a day
/// alone (a day, so that what the budget regains while a test runs rounds to nothing). Each
/// answers a GET with `ok` and echoes a POST's body.
async fn serve<St: Store + Clone + Default>() -> SocketAddr {
    let limit = RateLimit::with_limits(Limits::<St>::empty())
        .route("/both", Limits::empty().max_body(1024).body_bytes(body_bytes(St::default())))
        .route("/bytes", Limits::empty().body_bytes(body_bytes(St::default())));
    let path = warp::path!("both").or(warp::path!("bytes")).unify();
    let get = warp::get().map(|| http::Response::new(Bytes::from_static(b"ok")));
    let echo = warp::post().and(warp::body::bytes()).map(http::Response::new);
    support::start(&limit, path.and(get.or(echo).unify())).await
}

type Sender = SendRequest<BoxBody<Bytes, Infallible>>;

/// One HTTP/2 connection (prior knowledge: no upgrade), every request on it from 127.0.0.1.
async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One response, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn send(sender: &mut Sender, request: Request<BoxBody<Bytes, Infallible>>) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), async {
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    })
    .await
    .expect("the request timed out")
}

fn uri(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A GET as HTTP/2 clients send it: headers with END_STREAM, no `Content-Length`.
fn bodyless_get(addr: SocketAddr, path: &str) -> Request<BoxBody<Bytes, Infallible>> {
    Request::get(uri(addr, path)).body(Empty::new().boxed()).unwrap()
}

/// A POST whose length is known, so the client declares it (`Content-Length`).
fn sized_post(addr: SocketAddr, path: &str, len: usize) -> Request<BoxBody<Bytes, Infallible>> {
    Request::post(uri(addr, path)).body(Full::new(Bytes::from(vec![b'x'; len])).boxed()).unwrap()
}

/// An upload of unknown length: `chunks` DATA frames of `size` bytes each, no `Content-Length`.
fn streamed_post(addr: SocketAddr, path: &str, chunks: usize, size: usize) -> Request<BoxBody<Bytes, Infallible>> {
    let frames = (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; size]))));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let request = Request::post(uri(addr, path)).body(body).unwrap();
    assert!(request.headers().get("content-length").is_none());
    request
}

#[tokio::test]
async fn bodyless_http2_gets_cost_no_body_bytes() {
    let addr = serve::<MemoryStore>().await;
    let mut client = connect(addr).await;
    // Were each charged the largest body (1 KiB), the fifth GET on `/both` would be refused;
    // were each refused 411, none would pass on `/bytes`.
    for i in 0..20 {
        for path in ["/both", "/bytes"] {
            let reply = send(&mut client, bodyless_get(addr, path)).await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok"), "GET {path} #{i}");
        }
    }
    // The budgets are whole: a declared body takes its own length from all of 4 KiB.
    let first = send(&mut client, sized_post(addr, "/both", 1024)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((first.header("x-ratelimit-limit"), first.header("x-ratelimit-remaining")), ("4096", "3072"));
    let whole = send(&mut client, sized_post(addr, "/bytes", 4096)).await;
    assert_eq!((whole.status, whole.header("x-ratelimit-remaining")), (StatusCode::OK, "0"));
}

/// A GET whose headers do not end its stream (the client ends it later, or never): its length is
/// unknown when the request arrives, and it turns out to carry nothing the filter reads.
fn open_get(addr: SocketAddr, path: &str) -> Request<BoxBody<Bytes, Infallible>> {
    let never = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
    Request::get(uri(addr, path)).body(StreamBody::new(never).boxed()).unwrap()
}

#[tokio::test]
async fn http2_gets_of_unknown_length_cost_what_they_carry() {
    let addr = serve::<MemoryStore>().await;
    let mut client = connect(addr).await;
    // Were each charged the largest body (1 KiB), the fifth GET on `/both` would be refused;
    // were each refused 411, none would pass on `/bytes`.
    for i in 0..20 {
        for path in ["/both", "/bytes"] {
            let reply = send(&mut client, open_get(addr, path)).await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok"), "GET {path} #{i}");
        }
    }
    let first = send(&mut client, sized_post(addr, "/both", 1024)).await;
    assert_eq!((first.status, first.header("x-ratelimit-remaining")), (StatusCode::OK, "3072"));
    let whole = send(&mut client, sized_post(addr, "/bytes", 4096)).await;
    assert_eq!((whole.status, whole.header("x-ratelimit-remaining")), (StatusCode::OK, "0"));
}

#[tokio::test]
async fn streamed_http2_upload_over_the_largest_body_is_413() {
    let addr = serve::<MemoryStore>().await;
    let mut client = connect(addr).await;
    // Within the largest body: echoed whole, and charged what it was.
    let fits = send(&mut client, streamed_post(addr, "/both", 2, 500)).await;
    assert_eq!((fits.status, fits.body.len()), (StatusCode::OK, 1000));
    // Over it: cut off at the third frame, answered with the core's 413 (not warp's own answer
    // to a body it could not read).
    let big = send(&mut client, streamed_post(addr, "/both", 4, 400)).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.header("content-type"), "application/json");
    assert_eq!(big.text(), r#"{"error":"payload_too_large","limit":1024}"#);
    // Charged what was read before the cut-off: 1000 + 800 of 4096, then 10 more.
    let after = send(&mut client, sized_post(addr, "/both", 10)).await;
    assert_eq!(after.header("x-ratelimit-remaining"), "2286");
}

#[tokio::test]
async fn streamed_http2_upload_over_the_bytes_budget_is_429() {
    over_the_budget::<MemoryStore>().await;
}

/// The same over a store whose answers are not ready when first polled, as a remote store's
/// are: the service checks such a route through its asynchronous path, and a body's parts are
/// charged through the charge's futures (the path of a Redis store).
#[tokio::test]
async fn streamed_http2_upload_over_a_remote_bytes_budget_is_429() {
    over_the_budget::<Remote>().await;
}

async fn over_the_budget<St: Store + Clone + Default>() {
    let addr = serve::<St>().await;
    let mut client = connect(addr).await;
    for _ in 0..5 {
        assert_eq!(send(&mut client, bodyless_get(addr, "/bytes")).await.status, StatusCode::OK);
    }
    // No largest body to charge instead, and no 411: 3000 of 4096 bytes, counted as they stream.
    let first = send(&mut client, streamed_post(addr, "/bytes", 3, 1000)).await;
    assert_eq!((first.status, first.body.len()), (StatusCode::OK, 3000));
    // The next 3000 pass the budget at their second frame: 429 with the core's headers and body.
    let refused = send(&mut client, streamed_post(addr, "/bytes", 3, 1000)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.text());
    assert!(refused.text().contains(r#""limit":"body_bytes""#), "{}", refused.text());
    assert!(!refused.header("retry-after").is_empty());
    assert_eq!(refused.header("x-ratelimit-limit"), "4096");
    // It was charged its first frame (1000 bytes) and nothing after: 96 bytes are left.
    assert_eq!(send(&mut client, sized_post(addr, "/bytes", 96)).await.status, StatusCode::OK);
    assert_eq!(send(&mut client, sized_post(addr, "/bytes", 1)).await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// The in-memory store behind futures that are not ready when first polled.
#[derive(Clone, Debug, Default)]
struct Remote(MemoryStore);

impl Store for Remote {
    type Limit = MemoryLimit;

    fn register(&self, spec: &LimitSpec) -> Result<MemoryLimit, StoreError> {
        self.0.register(spec)
    }

    async fn check<'a>(
        &'a self,
        checks: &'a [Check<'a, MemoryLimit>],
        out: &'a mut [Snapshot],
    ) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.check(checks, out).await
    }

    fn block<'a>(
        &'a self,
        limit: &'a MemoryLimit,
        key: Key<'a>,
        duration: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.0.block(limit, key, duration)
    }
}
