//! Test helpers: a server on a free loopback port, and a bare HTTP/1.1 client that can speak from
//! a loopback address of its own (127.0.0.x), so each test client has its own per-IP quota.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tollgate::Store;
use tollgate_warp::RateLimit;
use warp::Filter;

/// Serves `routes` behind `limit` on a free loopback port.
pub async fn start<St, F>(limit: &RateLimit<St>, routes: F) -> SocketAddr
where
    St: Store,
    F: Filter<Error = warp::Rejection> + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tollgate_warp::serve(listener, limit.service(routes)));
    addr
}

/// A connection to `addr` from the loopback address `from` (e.g. `127.0.0.7`).
pub async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let from: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await.unwrap().unwrap()
}

/// A response: status, head (lower-cased) and body (de-chunked).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Sends `raw` (a whole request, which should say `connection: close`) from `from` and reads the
/// whole response.
pub async fn send_from(from: &str, addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = connect_from(from, addr).await;
    stream.write_all(raw).await.unwrap();
    read_reply(&mut stream).await
}

/// Reads a whole response until the server closes the connection.
pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    parse(&raw)
}

pub fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Reply { status, head, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest.get(size + 2..).unwrap_or("");
    }
    out
}

/// `GET path` from `from`, with `extra` header lines (each ending in `\r\n`).
pub async fn get_from(from: &str, addr: SocketAddr, path: &str, extra: &str) -> Reply {
    let raw = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{extra}\r\n");
    send_from(from, addr, raw.as_bytes()).await
}

/// `POST path` from `from` with a `Content-Length` body.
pub async fn post_from(from: &str, addr: SocketAddr, path: &str, body: &[u8]) -> Reply {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())
            .into_bytes();
    raw.extend_from_slice(body);
    send_from(from, addr, &raw).await
}

/// `POST path` from `from` with a chunked body of `chunks` (no `Content-Length`).
pub async fn post_chunked_from(from: &str, addr: SocketAddr, path: &str, chunks: &[&[u8]]) -> Reply {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
            .into_bytes();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    send_from(from, addr, &raw).await
}
