//! Counts the slow-loris connections a server holds: opens `N` connections from loopback source
//! addresses, sends the start of a request on each and then one more byte every second, and after
//! `SECONDS` reports how many the server still holds open (and when it closed the others).
//!
//! Run with: cargo run -p tollgate-conformance --bin slowloris -- ADDR [N] [SECONDS] [head|body]
//!
//! - `head` (the default): `GET /api/hello HTTP/1.1` and a header that never ends (a request head
//!   trickled forever; only a header-read timeout ends it).
//! - `body`: a whole head of `POST /api/echo` declaring a 1,000-byte body, then the body trickled
//!   (only a body-read or request timeout, or a limit on requests, ends it).
//!
//! The connections come from `127.0.0.100` to `127.0.0.199`, a hundredth of them each, so that
//! per-client limits see a hundred clients. It only ever talks to loopback, and stops by itself.

// A console tool: it reports on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What became of one connection.
#[derive(Debug)]
enum Fate {
    /// Never connected.
    Refused,
    /// The server closed it (EOF, reset or a failed write) this long after it connected, having
    /// written this many bytes first (an error response, say).
    Closed(Duration, usize),
    /// Still open at the end.
    Held,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: slowloris ADDR [N] [SECONDS] [head|body]   (ADDR: a loopback address:port)");
        return ExitCode::FAILURE;
    };
    if !addr.ip().is_loopback() {
        eprintln!("slowloris talks to loopback addresses only");
        return ExitCode::FAILURE;
    }
    let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(600).min(5000);
    let seconds: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(15).min(120);
    let body = args.get(3).is_some_and(|m| m == "body");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fates = runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let host = 100 + u8::try_from(i % 100).unwrap_or(0);
                tokio::spawn(trickle(addr, Ipv4Addr::new(127, 0, 0, host), body, deadline))
            })
            .collect();
        let mut fates = Vec::with_capacity(count);
        for task in tasks {
            fates.push(task.await.unwrap_or(Fate::Refused));
        }
        fates
    });
    let held = fates.iter().filter(|f| matches!(f, Fate::Held)).count();
    let refused = fates.iter().filter(|f| matches!(f, Fate::Refused)).count();
    let mut closed: Vec<(Duration, usize)> =
        fates.iter().filter_map(|f| if let Fate::Closed(d, n) = f { Some((*d, *n)) } else { None }).collect();
    closed.sort();
    let answered = closed.iter().filter(|(_, n)| *n > 0).count();
    let mode = if body { "body" } else { "head" };
    println!("{addr}, {count} connections trickling their {mode} for {seconds} s:");
    println!("  held open at the end: {held}");
    println!("  closed by the server: {} ({answered} of them after writing a response)", closed.len());
    if let (Some(first), Some(last)) = (closed.first(), closed.last()) {
        let median = closed[closed.len() / 2].0;
        println!(
            "    after {:.1} s (first), {:.1} s (median), {:.1} s (last)",
            first.0.as_secs_f64(),
            median.as_secs_f64(),
            last.0.as_secs_f64()
        );
    }
    println!("  never connected: {refused}");
    ExitCode::SUCCESS
}

/// One slow client: connects from `source`, sends the start of a request, then a byte a second
/// until the server closes the connection or `deadline` passes.
async fn trickle(addr: SocketAddr, source: Ipv4Addr, body: bool, deadline: Instant) -> Fate {
    let Ok(socket) = TcpSocket::new_v4() else { return Fate::Refused };
    if socket.bind(SocketAddr::from((source, 0))).is_err() {
        return Fate::Refused;
    }
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await else {
        return Fate::Refused;
    };
    let started = Instant::now();
    let start: &[u8] = if body {
        b"POST /api/echo HTTP/1.1\r\nHost: slowloris\r\nContent-Length: 1000\r\n\r\n"
    } else {
        b"GET /api/hello HTTP/1.1\r\nHost: slowloris\r\nX-Slow: "
    };
    if stream.write_all(start).await.is_err() {
        return Fate::Closed(started.elapsed(), 0);
    }
    let mut read = 0;
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Fate::Held;
        }
        // Read for up to a second: EOF or an error is the server closing; bytes are a response
        // (e.g. 408), after which the server should close too.
        let wait = (deadline - now).min(Duration::from_secs(1));
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Fate::Closed(started.elapsed(), read),
            Ok(Ok(n)) => {
                read += n;
                continue;
            }
            Err(_) => {}
        }
        if Instant::now() < deadline && stream.write_all(b"a").await.is_err() {
            return Fate::Closed(started.elapsed(), read);
        }
    }
}
