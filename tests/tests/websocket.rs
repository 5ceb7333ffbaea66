//! The WebSocket contract of every demo (`GET /ws`, an echo, with the `[[websocket]]` limits of
//! `examples/demo-config.toml`), over real sockets: upgrades per minute, open sockets per client
//! (freed by a clean close and by a reset), messages per connection and per client, bytes per
//! connection, the largest message and the per-kind `catch_up` limit.
//!
//! Every scenario has its own client address: each has 10 upgrades a minute to spend (a refused
//! upgrade spends one too). Where a count depends on the clock, a scenario allows what the limit
//! may have replenished in the time it took ([`admitted_at_most`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tollgate_conformance::{
    Client, RefusedUpgrade, Reply, Server, WebSocket, admitted_at_most, check_refusal, close, empty, error_frame,
    next_message, reset, roundtrip, run, send,
};

/// `connections = "10/min"`: new sockets per client, one more every 6 s.
const UPGRADES: u64 = 10;
const UPGRADE_EVERY: Duration = Duration::from_secs(6);
/// `concurrent_per_key = 3`.
const OPEN: usize = 3;
/// `messages = "20/10s"` per connection: one more every 500 ms.
const MESSAGES: u64 = 20;
const MESSAGE_EVERY: Duration = Duration::from_millis(500);
/// `key_messages = "40/10s"` per client: one more every 250 ms.
const KEY_MESSAGES: u64 = 40;
const KEY_MESSAGE_EVERY: Duration = Duration::from_millis(250);
/// `max_message = "16KiB"`.
const MAX_MESSAGE: usize = 16 * 1024;
/// `bytes = "256KiB/min"` per connection: 16 messages of 16 KiB, one more every 3.75 s.
const BYTES: u64 = 256 * 1024;

async fn open(client: Client, what: &str) -> WebSocket {
    client.websocket().await.unwrap_or_else(|refused| panic!("{what}: the upgrade was refused: {refused:?}"))
}

/// Asserts that `reply` echoes `sent`.
fn assert_echo(reply: &Message, sent: &Message, what: &str) {
    assert_eq!(reply, sent, "{what}: expected the echo");
}

/// Checks the error frame's exact shape and `limit`; returns its `retry_after`.
fn check_error_frame(frame: &Value, limit: &str) -> u64 {
    let fields: Vec<&str> = frame.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(fields.len(), 3, "error, limit and retry_after: {frame}");
    assert_eq!(frame["limit"], limit, "{frame}");
    let retry_after = frame["retry_after"].as_u64().unwrap_or_else(|| panic!("no retry_after in {frame}"));
    assert!(retry_after >= 1, "{frame}");
    retry_after
}

/// The refusal of an upgrade over the open-socket limit: 429 with `Retry-After`, and the JSON
/// refusal when the client read the body with the head.
fn check_refused_open(refused: &RefusedUpgrade) {
    assert_eq!(refused.status(), 429, "{refused:?}");
    let retry_after = refused.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After: {refused:?}");
    if let Some(Ok(body)) = refused.body().as_deref().map(serde_json::from_slice::<Value>) {
        assert_eq!(body["error"], "rate_limited", "{refused:?}");
    }
}

/// An upgrade request through hyper, which reads a refusal whole. After a refusal the same
/// connection must answer a plain HTTP request, or be closed by the server: never left a
/// half-open WebSocket (a request that times out fails the scenario).
async fn upgrade_by_hand(client: Client) -> Reply {
    let mut http = client.http().await;
    let request = client
        .request(Method::GET, "/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let reply = http.send(request).await.expect("a response to the upgrade request");
    if reply.status != 101 {
        let next = client.request(Method::GET, "/api/hello").body(empty()).unwrap();
        match http.send(next).await {
            Ok(next) => assert_eq!(next.status, 200, "after the refused upgrade, plain HTTP: {next:?}"),
            Err(e) => assert!(!e.is_parse(), "after the refused upgrade the connection spoke no HTTP: {e}"),
        }
    }
    reply
}

#[test]
fn ten_upgrades_a_minute_then_429() {
    run("GET /ws: 10 upgrades a minute per client, the 11th refused with 429 and headers", upgrades_per_minute);
}

async fn upgrades_per_minute(server: Server) {
    let client = server.client(20);
    let started = Instant::now();
    for opened in 1..=UPGRADES {
        let mut socket = open(client, &format!("upgrade {opened} of 10")).await;
        let hello = Message::text(format!("socket {opened}"));
        assert_echo(&roundtrip(&mut socket, hello.clone()).await, &hello, "a fresh socket");
        close(socket).await;
    }
    for attempt in UPGRADES + 1..=UPGRADES + 5 {
        let reply = upgrade_by_hand(client).await;
        if reply.status == 101 {
            let bound = admitted_at_most(UPGRADES, UPGRADE_EVERY, started.elapsed());
            assert!(attempt <= bound, "{attempt} upgrades admitted in {:?}", started.elapsed());
            continue;
        }
        let body = check_refusal(&reply, UPGRADES);
        assert_eq!(reply.number("x-ratelimit-remaining"), 0, "{reply:?}");
        assert_eq!(body["limit"], "connections", "{reply:?}");
        assert!(reply.number("retry-after") <= 6, "one more upgrade every 6 s: {reply:?}");
        return;
    }
    panic!("no refusal after {} upgrades", UPGRADES + 5);
}

/// How a test lets go of a socket.
#[derive(Clone, Copy, Debug)]
enum LetGo {
    /// A close frame and the closing handshake.
    Close,
    /// A TCP reset, no close frame: the client vanished.
    Reset,
}

#[test]
fn three_open_sockets_a_clean_close_frees_a_place() {
    run("GET /ws: at most 3 open sockets per client (the 4th gets 429), a clean close frees a place", |server| {
        at_most_three_open(server.client(21), LetGo::Close)
    });
}

#[test]
fn three_open_sockets_a_reset_frees_a_place() {
    run("GET /ws: at most 3 open sockets per client, a TCP reset frees a place", |server| {
        at_most_three_open(server.client(22), LetGo::Reset)
    });
}

async fn at_most_three_open(client: Client, let_go: LetGo) {
    let mut sockets = Vec::new();
    for i in 1..=OPEN {
        sockets.push(open(client, &format!("socket {i} of 3")).await);
    }
    let fourth = client.websocket().await.expect_err("a 4th open socket was accepted");
    check_refused_open(&fourth);
    let first = sockets.remove(0);
    match let_go {
        LetGo::Close => close(first).await,
        LetGo::Reset => reset(first),
    }
    // The place is free once the server has seen the socket go. Each try spends one of the
    // client's 10 upgrades a minute (4 spent so far), so the tries are few and spaced out.
    let mut wait = Duration::from_millis(25);
    let mut replacement = None;
    for _ in 0..5 {
        tokio::time::sleep(wait).await;
        match client.websocket().await {
            Ok(socket) => {
                replacement = Some(socket);
                break;
            }
            Err(refused) => check_refused_open(&refused),
        }
        wait *= 4;
    }
    let replacement =
        replacement.unwrap_or_else(|| panic!("the place of the socket let go by {let_go:?} was not freed"));
    sockets.push(replacement);
    check_refused_open(&client.websocket().await.expect_err("a 4th open socket after the replacement"));
    for (i, socket) in sockets.iter_mut().enumerate() {
        let message = Message::text(format!("still open {i}"));
        assert_echo(&roundtrip(socket, message.clone()).await, &message, "an open socket");
    }
}

#[test]
fn twenty_messages_per_10s_then_an_error_frame() {
    run("GET /ws: 20 messages per 10 s per socket, the 21st gets an error frame, the socket stays open", message_rate);
}

async fn message_rate(server: Server) {
    let mut socket = open(server.client(23), "the socket").await;
    let started = Instant::now();
    for sent in 1..=MESSAGES + 20 {
        let message = Message::text(format!("m{sent}"));
        let reply = roundtrip(&mut socket, message.clone()).await;
        if sent <= MESSAGES {
            assert_echo(&reply, &message, &format!("message {sent} of 20"));
            continue;
        }
        let Some(frame) = error_frame(&reply) else {
            assert_echo(&reply, &message, "neither the echo nor an error frame");
            assert!(sent <= admitted_at_most(MESSAGES, MESSAGE_EVERY, started.elapsed()), "{sent} messages passed");
            continue;
        };
        let retry_after = check_error_frame(&frame, "messages");
        assert_eq!(retry_after, 1, "one more message every 500 ms: {frame}");
        // Dropped, not closed: once the wait is over, messages pass again on the same socket.
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let again = Message::text("again");
        assert_echo(&roundtrip(&mut socket, again.clone()).await, &again, "after retry_after");
        return;
    }
    panic!("no error frame after {} messages", MESSAGES + 20);
}

#[test]
fn forty_messages_per_10s_per_client_across_sockets() {
    run("GET /ws: 40 messages per 10 s per client across its sockets (key_messages)", key_messages);
}

async fn key_messages(server: Server) {
    let client = server.client(24);
    let mut sockets = Vec::new();
    for i in 1..=OPEN {
        sockets.push(open(client, &format!("socket {i} of 3")).await);
    }
    let started = Instant::now();
    // 20 on each of two sockets: within each socket's own 20, and the client's 40 are spent.
    for (s, socket) in sockets[..2].iter_mut().enumerate() {
        for i in 1..=MESSAGES {
            let message = Message::text(format!("s{s} m{i}"));
            assert_echo(&roundtrip(socket, message.clone()).await, &message, &format!("socket {s}, message {i}"));
        }
    }
    // The third socket's own quota is untouched, the client's is not.
    let third = &mut sockets[2];
    let (mut echoed, mut refused) = (0, 0);
    for i in 1..=10 {
        let message = Message::text(format!("third m{i}"));
        let reply = roundtrip(third, message.clone()).await;
        match error_frame(&reply) {
            Some(frame) => {
                check_error_frame(&frame, "key_messages");
                refused += 1;
            }
            None => {
                assert_echo(&reply, &message, "neither the echo nor an error frame");
                echoed += 1;
            }
        }
    }
    let replenished = admitted_at_most(0, KEY_MESSAGE_EVERY, started.elapsed());
    assert!(refused > 0, "the client's {KEY_MESSAGES} messages were spent, yet all 10 on a third socket passed");
    assert!(echoed <= replenished, "{echoed} passed on the third socket; the client's quota gave back {replenished}");
}

#[test]
fn a_message_over_16kib_closes_1009() {
    run("GET /ws: a message over 16 KiB closes the socket with 1009", message_size);
}

async fn message_size(server: Server) {
    let client = server.client(25);
    for large in [Message::binary(vec![b'b'; MAX_MESSAGE + 1]), Message::text("t".repeat(MAX_MESSAGE + 1))] {
        let mut socket = open(client, "the socket").await;
        let largest = Message::binary(vec![b'a'; MAX_MESSAGE]);
        assert_echo(&roundtrip(&mut socket, largest.clone()).await, &largest, "a message of 16 KiB");
        send(&mut socket, large).await;
        match next_message(&mut socket).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009, "{frame:?}"),
            other => panic!("expected close 1009 after a message over 16 KiB, got {other:?}"),
        }
    }
}

#[test]
fn catch_up_twice_a_minute() {
    run("GET /ws: {\"action\":\"catch_up\"} twice a minute, the 3rd gets an error frame, others pass", catch_up);
}

async fn catch_up(server: Server) {
    let mut socket = open(server.client(26), "the socket").await;
    let catch_up = Message::text(r#"{"action":"catch_up"}"#);
    for i in 1..=2 {
        assert_echo(&roundtrip(&mut socket, catch_up.clone()).await, &catch_up, &format!("catch_up {i} of 2"));
    }
    for i in 3..=4 {
        let reply = roundtrip(&mut socket, catch_up.clone()).await;
        let frame =
            error_frame(&reply).unwrap_or_else(|| panic!("catch_up {i}: expected an error frame, got {reply:?}"));
        let retry_after = check_error_frame(&frame, "catch_up");
        assert!(retry_after <= 30, "one more catch_up every 30 s: {frame}");
        // Ordinary messages, other actions among them, still pass.
        for other in [Message::text("hello"), Message::text(r#"{"action":"subscribe"}"#)] {
            assert_echo(&roundtrip(&mut socket, other.clone()).await, &other, "an ordinary message");
        }
    }
}

#[test]
fn bytes_per_minute_per_socket() {
    run("GET /ws: 256 KiB of messages per minute per socket, then an error frame", bytes_per_socket);
}

async fn bytes_per_socket(server: Server) {
    let mut socket = open(server.client(27), "the socket").await;
    let fits = BYTES / MAX_MESSAGE as u64;
    let every = Duration::from_secs(60) / u32::try_from(fits).unwrap();
    let started = Instant::now();
    // Under the 20 messages of the message rate: only the bytes can refuse.
    for sent in 1..MESSAGES {
        let message = Message::binary(vec![b'k'; MAX_MESSAGE]);
        let reply = roundtrip(&mut socket, message.clone()).await;
        if sent <= fits {
            assert_echo(&reply, &message, &format!("message {sent} of 16 KiB"));
            continue;
        }
        let Some(frame) = error_frame(&reply) else {
            assert_echo(&reply, &message, "neither the echo nor an error frame");
            assert!(sent <= admitted_at_most(fits, every, started.elapsed()), "{sent} messages of 16 KiB passed");
            continue;
        };
        let retry_after = check_error_frame(&frame, "bytes");
        assert!(retry_after <= 4, "16 KiB come back within 3.75 s: {frame}");
        return;
    }
    panic!("no error frame after {} messages of 16 KiB", MESSAGES - 1);
}
