//! Test helpers: a server on a loopback port and a small HTTP/1 client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

/// Serves `app` on 127.0.0.1:0 with `ConnectInfo`; returns its address.
pub async fn serve(app: Router) -> SocketAddr {
    serve_service(app).await
}

/// [`serve`] for any service, such as a middleware around a whole router.
pub async fn serve_service<S>(service: S) -> SocketAddr
where
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(service);
    tokio::spawn(async move { axum::serve(listener, make).await.unwrap() });
    addr
}

/// One response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Sends one request on a fresh connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    })
    .await
    .expect("the request timed out")
}

pub fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "localhost")
}

pub async fn get_ok(addr: SocketAddr, path: &str) -> Reply {
    send(addr, get(path).body(Full::default()).unwrap()).await
}
