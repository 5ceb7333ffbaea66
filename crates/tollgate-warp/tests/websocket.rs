//! WebSocket limits over real sockets: the upgrade guard (429 with headers, 503 for a full global
//! cap, before the handshake), leases released however the socket ends, and the message limits
//! of `LimitedWebSocket` (error frames, close codes 1009 and 4429, per-kind limits, delay).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tollgate_warp::{LimitedWs, RateLimit};
use warp::Filter;

use support::{connect_from, get_from, start};

type Client = WebSocketStream<TcpStream>;

/// The header lines of a WebSocket upgrade request, for the bare client.
const UPGRADE: &str = "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

const CONFIG: &str = r#"
[[websocket]]
path = "/ws"
connections = "100/min"
concurrent_per_key = 2
messages = "3/10s"
max_message = "1KiB"
kinds = [{ name = "catch_up", field = "action", equals = "catch_up", quota = "1/min" }]

[[websocket]]
path = "/rate"
connections = "2/min"

[[websocket]]
path = "/global"
concurrent_global = 1

[[websocket]]
path = "/close"
messages = "1/10s"
on_exceed = "close"

[[websocket]]
path = "/delay"
messages = "2/s burst 1"
on_exceed = "delay"
max_delay = "2s"

[[websocket]]
path = "/bytes"
bytes = "100/min"
"#;

/// Echoes text and binary messages on every path, through `tollgate_warp::ws()`.
async fn server() -> SocketAddr {
    let limit = RateLimit::from_config(&CONFIG.parse().unwrap()).unwrap();
    let echo = warp::path::param::<String>().and(warp::path::end()).and(tollgate_warp::ws()).map(
        |_: String, ws: LimitedWs| {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                        break;
                    }
                }
            })
        },
    );
    start(&limit, echo).await
}

async fn open(from: &str, addr: SocketAddr, path: &str) -> Result<Client, WsError> {
    let stream = connect_from(from, addr).await;
    let url = format!("ws://{addr}{path}");
    let connected = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, stream));
    connected.await.unwrap().map(|(socket, _)| socket)
}

fn refused_status(result: Result<Client, WsError>) -> (u16, Option<String>) {
    match result {
        Err(WsError::Http(response)) => {
            (response.status().as_u16(), response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

async fn next(socket: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap()
}

/// Opens `path` from `from`, retrying while the refused place is still being released.
async fn open_eventually(from: &str, addr: SocketAddr, path: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(from, addr, path).await {
            Ok(socket) => return socket,
            Err(e) => assert!(Instant::now() < deadline, "the place was never released: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_sockets_per_client_are_capped_and_freed_by_a_close_or_a_reset() {
    let addr = server().await;
    let mut a = open("127.0.1.1", addr, "/ws").await.unwrap();
    let _b = open("127.0.1.1", addr, "/ws").await.unwrap();
    assert_eq!(refused_status(open("127.0.1.1", addr, "/ws").await), (429, Some("1".into())));
    // Another client has its own places.
    let _other = open("127.0.1.2", addr, "/ws").await.unwrap();

    // A clean close frees a place.
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), a.next()).await.unwrap() {}
    let c = open_eventually("127.0.1.1", addr, "/ws").await;
    assert_eq!(refused_status(open("127.0.1.1", addr, "/ws").await).0, 429);

    // So does a client that vanishes (its TCP connection dropped without a close frame).
    drop(c);
    let _d = open_eventually("127.0.1.1", addr, "/ws").await;
}

#[tokio::test]
async fn upgrades_over_the_connection_rate_get_429_with_headers_before_the_handshake() {
    let addr = server().await;
    let _a = open("127.0.1.3", addr, "/rate").await.unwrap();
    let _b = open("127.0.1.3", addr, "/rate").await.unwrap();
    let refused = get_from("127.0.1.3", addr, "/rate", UPGRADE).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.header("retry-after").is_some());
    assert!(refused.header("sec-websocket-accept").is_none(), "no half-open socket");
    assert!(refused.body.contains(r#""error":"rate_limited""#), "{refused:?}");
}

#[tokio::test]
async fn a_full_global_cap_gets_503() {
    let addr = server().await;
    let _a = open("127.0.1.4", addr, "/global").await.unwrap();
    assert_eq!(refused_status(open("127.0.1.5", addr, "/global").await).0, 503);
}

#[tokio::test]
async fn messages_over_the_rate_get_an_error_frame_and_the_socket_stays_open() {
    let addr = server().await;
    let mut socket = open("127.0.1.6", addr, "/ws").await.unwrap();
    for i in 0..4 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(next(&mut socket).await, Message::text(format!("m{i}")));
    }
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.starts_with(r#"{"error":"rate_limited","limit":"messages","retry_after":"#), "{frame}");
    socket.send(Message::Ping(vec![1].into())).await.unwrap();
    assert!(matches!(next(&mut socket).await, Message::Pong(_)), "the socket is still open");
}

#[tokio::test]
async fn a_message_over_the_largest_closes_with_1009() {
    let addr = server().await;
    let mut socket = open("127.0.1.7", addr, "/ws").await.unwrap();
    socket.send(Message::binary(vec![0u8; 2000])).await.unwrap();
    match next(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size, "{frame:?}"),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn a_kind_has_its_own_limit() {
    let addr = server().await;
    let mut socket = open("127.0.1.8", addr, "/ws").await.unwrap();
    let catch_up = r#"{"action":"catch_up"}"#;
    socket.send(Message::text(catch_up)).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text(catch_up));
    socket.send(Message::text(catch_up)).await.unwrap();
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.contains(r#""limit":"catch_up""#), "{frame}");
}

#[tokio::test]
async fn the_close_action_closes_with_4429() {
    let addr = server().await;
    let mut socket = open("127.0.1.9", addr, "/close").await.unwrap();
    socket.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("one"));
    socket.send(Message::text("two")).await.unwrap();
    match next(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4429, "{frame:?}"),
        other => panic!("expected close 4429, got {other:?}"),
    }
}

#[tokio::test]
async fn the_delay_action_holds_a_message_instead_of_dropping_it() {
    let addr = server().await;
    let mut socket = open("127.0.1.10", addr, "/delay").await.unwrap();
    socket.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("one"));
    let started = Instant::now();
    socket.send(Message::text("two")).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text("two"));
    assert!(started.elapsed() >= Duration::from_millis(300), "held {:?}", started.elapsed());
}

#[tokio::test]
async fn bytes_per_period() {
    let addr = server().await;
    let mut socket = open("127.0.1.11", addr, "/bytes").await.unwrap();
    let sixty = "b".repeat(60);
    socket.send(Message::text(sixty.clone())).await.unwrap();
    assert_eq!(next(&mut socket).await, Message::text(sixty.clone()));
    socket.send(Message::text(sixty)).await.unwrap();
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.contains(r#""limit":"bytes""#), "{frame}");
}

#[tokio::test]
async fn ws_without_websocket_limits_is_a_500_not_an_unlimited_socket() {
    let limit = RateLimit::from_config(&"".parse().unwrap()).unwrap();
    let route = tollgate_warp::ws().map(|ws: LimitedWs| ws.on_upgrade(|_socket| async {}));
    let addr = start(&limit, route).await;
    let refused = get_from("127.0.1.12", addr, "/", UPGRADE).await;
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(refused.header("sec-websocket-accept").is_none(), "no socket");
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(refused.body, r#"{"error":"websocket_limits_missing"}"#, "the core's answer, as on every adapter");
}

#[tokio::test]
async fn a_ws_in_an_or_branch_a_later_filter_rejected_leaves_the_lease_to_the_next_branch() {
    let config = "[[websocket]]\npath = \"/chat\"\nconcurrent_per_key = 1\n\n\
                  [[websocket]]\npath = \"/news\"\nconcurrent_per_key = 1\n";
    let limit = RateLimit::from_config(&config.parse().unwrap()).unwrap();
    let hold =
        |ws: LimitedWs| ws.on_upgrade(|mut socket| async move { while let Some(Ok(_)) = socket.next().await {} });
    // On `/news`, the first branch's `ws()` runs, then `path("chat")` rejects it: the second
    // branch's must still find the lease (and warp's handshake) to count and serve the socket.
    let routes =
        tollgate_warp::ws().and(warp::path("chat")).map(hold).or(tollgate_warp::ws().and(warp::path("news")).map(hold));
    let addr = start(&limit, routes).await;
    let mut first = open("127.0.1.15", addr, "/news").await.unwrap();
    first.send(Message::Ping(vec![1].into())).await.unwrap();
    assert!(matches!(next(&mut first).await, Message::Pong(_)), "the first socket is served");
    assert_eq!(refused_status(open("127.0.1.15", addr, "/news").await).0, 429, "the open socket is counted");
    let _chat = open("127.0.1.15", addr, "/chat").await.unwrap();
    assert_eq!(refused_status(open("127.0.1.15", addr, "/chat").await).0, 429);
}

#[tokio::test]
async fn a_handler_that_panics_releases_the_lease() {
    let limit =
        RateLimit::from_config(&"[[websocket]]\npath = \"/ws\"\nconcurrent_per_key = 1\n".parse().unwrap()).unwrap();
    let route = warp::path!("ws").and(tollgate_warp::ws()).map(|ws: LimitedWs| {
        ws.on_upgrade(|mut socket| async move {
            // The first message makes the handler panic, with the socket (and its lease) in hand.
            if let Some(Ok(message)) = socket.next().await {
                panic!("handler failed on {message:?}");
            }
        })
    });
    let addr = start(&limit, route).await;
    let mut first = open("127.0.1.13", addr, "/ws").await.unwrap();
    assert_eq!(refused_status(open("127.0.1.13", addr, "/ws").await).0, 429);
    first.send(Message::text("boom")).await.unwrap();
    let _second = open_eventually("127.0.1.13", addr, "/ws").await;
}

#[tokio::test]
async fn a_ping_flood_closes_with_1008() {
    let addr = server().await;
    let mut socket = open("127.0.1.14", addr, "/ws").await.unwrap();
    for _ in 0..40 {
        socket.send(Message::Ping(vec![0].into())).await.unwrap();
    }
    // Pongs for the pings the cap let through, then the close frame.
    for _ in 0..41 {
        match next(&mut socket).await {
            Message::Pong(_) => {}
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
                return;
            }
            other => panic!("expected pongs then close 1008, got {other:?}"),
        }
    }
    panic!("no close frame after a flood of 40 pings");
}
