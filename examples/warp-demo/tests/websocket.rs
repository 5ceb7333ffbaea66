//! The demo's `GET /ws` over real sockets, with its built-in limits: 3 open sockets per client
//! (the 4th gets 429 before the handshake), 20 messages per 10 s per socket (error frames, the
//! socket stays open), close 1009 over 16 KiB, `catch_up` twice a minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tollgate::config::Config;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn demo() -> SocketAddr {
    let config: Config = warp_demo::DEFAULT_CONFIG.parse().unwrap();
    let limits = warp_demo::limits(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { warp_demo::serve(listener, &limits, warp_demo::routes()).await });
    addr
}

async fn open(addr: SocketAddr) -> Result<Client, WsError> {
    let connect = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"));
    tokio::time::timeout(Duration::from_secs(10), connect).await.unwrap().map(|(s, _)| s)
}

async fn next(socket: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn a_fourth_socket_gets_429_before_the_handshake() {
    let addr = demo().await;
    let mut open_ones = Vec::new();
    for _ in 0..3 {
        open_ones.push(open(addr).await.unwrap());
    }
    match open(addr).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(other) => panic!("expected 429, got {other}"),
        Ok(_) => panic!("a 4th socket was admitted"),
    }
}

#[tokio::test]
async fn messages_over_20_per_10s_get_error_frames_and_the_socket_stays_open() {
    let addr = demo().await;
    let mut socket = open(addr).await.unwrap();
    for i in 0..21 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(next(&mut socket).await, Message::text(format!("m{i}")));
    }
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.starts_with(r#"{"error":"rate_limited","limit":"messages""#), "{frame}");
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    // Still refused (the period has not passed), but still open.
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.contains("rate_limited"), "{frame}");
}

#[tokio::test]
async fn a_message_over_16kib_closes_with_1009() {
    let addr = demo().await;
    let mut socket = open(addr).await.unwrap();
    socket.send(Message::binary(vec![0u8; 16 * 1024 + 1])).await.unwrap();
    match next(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn catch_up_passes_twice_a_minute() {
    let addr = demo().await;
    let mut socket = open(addr).await.unwrap();
    let catch_up = r#"{"action":"catch_up"}"#;
    for _ in 0..2 {
        socket.send(Message::text(catch_up)).await.unwrap();
        assert_eq!(next(&mut socket).await, Message::text(catch_up));
    }
    socket.send(Message::text(catch_up)).await.unwrap();
    let Message::Text(frame) = next(&mut socket).await else { panic!("expected the error frame") };
    assert!(frame.contains(r#""limit":"catch_up""#), "{frame}");
}
