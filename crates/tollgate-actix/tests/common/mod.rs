//! Serving an actix-web app on a loopback port, and a plain HTTP/1.1 client over real sockets.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server on 127.0.0.1 with `workers` workers; stopped on drop of the handle's owner.
pub struct Served {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
}

impl Served {
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Starts `HttpServer::new(factory)` on a free loopback port with `workers` workers.
#[macro_export]
macro_rules! serve {
    ($workers:expr, $factory:expr) => {{
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = actix_web::HttpServer::new($factory)
            .workers($workers)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .shutdown_timeout(1)
            .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        $crate::common::Served { addr, handle }
    }};
}

/// A response: status, the head in lower case, the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim().to_owned())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `raw` (a whole request, `Connection: close`) on a new connection and reads the answer.
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("reply timed out").unwrap();
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Reply {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + len]);
        raw = &raw[end + 4 + len..];
    }
    out
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub async fn get(addr: SocketAddr, path: &str, headers: &str) -> Reply {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n").as_bytes()).await
}

/// `POST path` with a `Content-Length` body.
pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Reply {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            .into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw).await
}

/// `POST path` with a chunked body of `chunks`.
pub async fn post_chunked(addr: SocketAddr, path: &str, chunks: &[&[u8]]) -> Reply {
    let mut raw =
        format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .into_bytes();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    exchange(addr, &raw).await
}
