//! Slow clients (slow-loris) against every demo, started with short server timeouts
//! ([`TIMEOUTS`]): a request head trickled a byte at a time, a connection that sends nothing, a
//! slow second head on a kept-alive connection, and a request body trickled after its head are
//! each cut off by the server within its timeout (plus a margin for a loaded machine), while
//! ordinary requests from other clients are served meanwhile.
//!
//! Raw TCP, not hyper's client: a slow client is one that does not send what a client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_conformance::{Client, HEADER_TIMEOUT, REQUEST_TIMEOUT, Server, TIMEOUTS, run_with};

/// What a loaded machine may add to a timeout before the client sees the connection closed;
/// under the 5 s that actix-web's own default head timeout takes, so that a demo ignoring the
/// timeouts it is given fails.
const MARGIN: Duration = Duration::from_secs(3);

/// How often a slow client sends its next byte: often enough that a per-read idle timeout would
/// never fire, so only a deadline on the whole head or body cuts it off.
const TRICKLE_EVERY: Duration = Duration::from_millis(250);

/// Slow heads at once against each demo.
const SLOW_HEADS: usize = 50;

/// The start of a request head that the slow client never finishes: a header line without end.
const SLOW_HEAD: &[u8] = b"GET /api/hello HTTP/1.1\r\nHost: demo\r\nX-Slow: ";

/// A whole head of a request whose 1,000-byte body the slow client then trickles.
const SLOW_BODY_HEAD: &[u8] = b"POST /api/echo HTTP/1.1\r\nHost: demo\r\nContent-Length: 1000\r\n\r\n";

/// How a slow connection ended: the server closed it this long after the client began, having
/// written `answer` first (an error response, or nothing).
struct Cut {
    after: Duration,
    answer: Vec<u8>,
}

/// Sends `start` on `stream`, then one byte every [`TRICKLE_EVERY`] (none when `trickle` is
/// false), until the server closes the connection — or panics, naming `what`, when it still
/// holds it `limit` after the start.
async fn hold(mut stream: TcpStream, start: &[u8], trickle: bool, limit: Duration, what: &str) -> Cut {
    let started = Instant::now();
    let mut answer = Vec::new();
    if stream.write_all(start).await.is_err() {
        return Cut { after: started.elapsed(), answer };
    }
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        assert!(!left.is_zero(), "{what}: the server still holds the connection after {limit:?}");
        match tokio::time::timeout(left.min(TRICKLE_EVERY), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Cut { after: started.elapsed(), answer },
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) if trickle => {
                if stream.write_all(b"a").await.is_err() {
                    return Cut { after: started.elapsed(), answer };
                }
            }
            Err(_) => {}
        }
    }
}

/// What a cut-off connection may have been answered: nothing (hyper closes a connection whose
/// head times out) or `408 Request Timeout`.
fn check_answer(cut: &Cut, what: &str) {
    let text = String::from_utf8_lossy(&cut.answer);
    assert!(
        cut.answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{what}: cut off after {:?} with an answer other than 408: {text:?}",
        cut.after
    );
}

/// An ordinary request from `client` on a connection of its own is served.
async fn served(client: Client, what: &str) {
    let reply = client.get("/api/hello").await;
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
}

#[test]
fn slow_request_heads_are_cut_off() {
    run_with(
        "50 request heads trickled a byte at a time and 5 silent connections are closed after the header timeout",
        TIMEOUTS,
        slow_heads,
    );
}

async fn slow_heads(server: Server) {
    let slow = server.client(30);
    let limit = HEADER_TIMEOUT + MARGIN;
    let mut held = Vec::new();
    for i in 0..SLOW_HEADS {
        let stream = slow.connect().await;
        held.push(tokio::spawn(async move { hold(stream, SLOW_HEAD, true, limit, &format!("slow head {i}")).await }));
    }
    for i in 0..5 {
        let stream = slow.connect().await;
        held.push(tokio::spawn(
            async move { hold(stream, b"", false, limit, &format!("silent connection {i}")).await },
        ));
    }
    // While they hang, another client is served.
    served(server.client(31), "an ordinary GET while 55 slow connections are open").await;
    for task in held {
        let cut = task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        check_answer(&cut, "a slow head");
    }
    served(server.client(31), "an ordinary GET after them").await;
}

#[test]
fn slow_head_on_a_kept_alive_connection_is_cut_off() {
    run_with(
        "a second request head trickled on a kept-alive connection is closed after the header timeout",
        TIMEOUTS,
        slow_second_head,
    );
}

async fn slow_second_head(server: Server) {
    if server.demo() == "actix-demo" {
        // actix-web's head timeout (`client_request_timeout`) covers the first request of a
        // connection only (actix-web issue 928): once the next request's first byte has come,
        // nothing times out the rest of its head, and actix-web offers no setting that would.
        // The README's "Production deployment" says to put a proxy with a header timeout in
        // front of it. Remove this exemption when actix-web times out every head.
        return;
    }
    let mut stream = server.client(32).connect().await;
    stream.write_all(b"GET /api/hello HTTP/1.1\r\nHost: demo\r\n\r\n").await.unwrap();
    // The first response, whole: its head and the 5 bytes of "hello".
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !(first.windows(4).any(|w| w == b"\r\n\r\n") && first.ends_with(b"hello")) {
        let n = tokio::time::timeout(HEADER_TIMEOUT + MARGIN, stream.read(&mut buf))
            .await
            .expect("the first response in time")
            .expect("the first response");
        assert!(n > 0, "closed before the first response: {:?}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&buf[..n]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&first));
    let cut = hold(stream, SLOW_HEAD, true, HEADER_TIMEOUT + MARGIN, "the slow second head").await;
    check_answer(&cut, "the slow second head");
}

#[test]
fn slow_request_bodies_are_cut_off() {
    run_with("request bodies trickled after their head are cut off after the request timeout", TIMEOUTS, slow_bodies);
}

async fn slow_bodies(server: Server) {
    // From clients of their own, so that no per-client limit refuses them first: only a
    // timeout can end them.
    let mut held = Vec::new();
    for host in 33..36 {
        let stream = server.client(host).connect().await;
        held.push(tokio::spawn(async move {
            hold(stream, SLOW_BODY_HEAD, true, REQUEST_TIMEOUT + MARGIN, &format!("a slow body from 127.0.0.{host}"))
                .await
        }));
    }
    served(server.client(36), "an ordinary GET while 3 bodies trickle").await;
    let reply = server.client(36).post("/api/echo", "ordinary").await;
    assert_eq!(reply.status, 200, "an ordinary POST while 3 bodies trickle: {reply:?}");
    for task in held {
        let cut = task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        check_answer(&cut, "a slow body");
        assert!(
            cut.after >= REQUEST_TIMEOUT.saturating_sub(Duration::from_millis(500)),
            "a slow body was cut off after {:?}, before the request timeout of {REQUEST_TIMEOUT:?}",
            cut.after
        );
    }
}
