//! WebSocket upgrades and actix-ws message limits over real sockets, with tokio-tungstenite as the
//! client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, web};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tollgate::websocket::{JsonFieldClassifier, MessageAction, MessageLimits};
use tollgate::{ConcurrencyLimiter, KeyKind, Limit, Policy};
use tollgate_actix::{Limits, RateLimit, WebSocketLimits};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An echo of text and binary messages; "panic" makes the session's task panic.
async fn echo(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = tollgate_actix::ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = messages.recv().await {
            let sent = match message {
                actix_ws::Message::Text(text) if &*text == "panic" => panic!("the handler panics"),
                actix_ws::Message::Text(text) => session.text(text).await,
                actix_ws::Message::Binary(bytes) => session.binary(bytes).await,
                actix_ws::Message::Ping(bytes) => session.pong(&bytes).await,
                actix_ws::Message::Close(reason) => {
                    let _ = session.close(reason).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

struct Server {
    served: common::Served,
    connections: ConcurrencyLimiter,
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    /// Waits (bounded) until no connection lease is held.
    async fn all_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connections.in_use() > 0 {
            assert!(Instant::now() < deadline, "a lease was never released: {} in use", self.connections.in_use());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn server(connections: ConcurrencyLimiter, messages: MessageLimits, rate: Option<&str>) -> Server {
    let mut limits = Limits::new().websocket(WebSocketLimits::new(connections.clone(), messages));
    if let Some(rate) = rate {
        let policy = Policy::builder("ws")
            .limit(Limit::new("connections", rate.parse().unwrap()).key(KeyKind::ip()))
            .build()
            .unwrap();
        limits = limits.policy(policy);
    }
    let limit = RateLimit::with_limits(limits);
    let served = serve!(1, move || App::new().wrap(limit.clone()).route("/ws", web::get().to(echo)));
    Server { served, connections }
}

async fn connect(addr: SocketAddr) -> Result<Client, WsError> {
    let connecting = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"));
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("handshake timed out")?;
    Ok(socket)
}

/// The HTTP status of a refused upgrade, and the response.
fn refused(result: Result<Client, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => {
            let headers = format!("{:?}", response.headers()).to_ascii_lowercase();
            (response.status().as_u16(), headers)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a socket"),
    }
}

async fn next(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no message within 10 s")
            .expect("the socket ended")
            .expect("a socket error");
        if !matches!(message, Message::Pong(_)) {
            return message;
        }
    }
}

async fn echoed(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    assert_eq!(next(client).await, Message::text(text));
}

fn close_code(message: &Message) -> Option<u16> {
    match message {
        Message::Close(Some(frame)) => Some(u16::from(frame.code)),
        _ => None,
    }
}

#[actix_web::test]
async fn upgrades_over_the_limits_get_429_or_503_before_the_handshake() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(2), MessageLimits::new(), Some("3/hour"));
    let mut a = connect(s.addr()).await.unwrap();
    let _b = connect(s.addr()).await.unwrap();
    // Two open: a third is over the per-client cap.
    let (status, headers) = refused(connect(s.addr()).await);
    assert_eq!(status, 429);
    assert!(headers.contains("retry-after"), "{headers}");
    echoed(&mut a, "still open").await;
    // A clean close frees a place, but the connection rate (3 per hour, one spent by the refusal) is now spent.
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    let (status, headers) = refused(connect(s.addr()).await);
    assert_eq!(status, 429);
    assert!(headers.contains("x-ratelimit-remaining"), "the rate refusal carries the rate headers: {headers}");
    s.served.stop().await;

    let s = server(ConcurrencyLimiter::new("ws").per_key(10).global(1), MessageLimits::new(), None);
    let _a = connect(s.addr()).await.unwrap();
    assert_eq!(refused(connect(s.addr()).await).0, 503, "the global cap is full");
    s.served.stop().await;
}

#[actix_web::test]
async fn the_lease_is_released_on_close_vanish_and_panic() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), MessageLimits::new(), None);
    // A clean close.
    let mut a = connect(s.addr()).await.unwrap();
    assert_eq!(s.connections.in_use(), 1, "the lease lives past the 101");
    echoed(&mut a, "hi").await;
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    s.all_released().await;
    // A client that vanishes without a close frame.
    let mut b = connect(s.addr()).await.unwrap();
    echoed(&mut b, "hi").await;
    drop(b);
    s.all_released().await;
    // A handler whose session task panics.
    let mut c = connect(s.addr()).await.unwrap();
    c.send(Message::text("panic")).await.unwrap();
    s.all_released().await;
    let mut d = connect(s.addr()).await.expect("the place is free again");
    echoed(&mut d, "after").await;
    s.served.stop().await;
}

#[actix_web::test]
async fn messages_over_the_rate_get_an_error_frame() {
    let limits = MessageLimits::new().messages("2/min".parse().unwrap());
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), limits, None);
    let mut c = connect(s.addr()).await.unwrap();
    echoed(&mut c, "one").await;
    echoed(&mut c, "two").await;
    c.send(Message::text("three")).await.unwrap();
    let Message::Text(frame) = next(&mut c).await else { panic!("an error frame") };
    assert_eq!(frame.as_str(), r#"{"error":"rate_limited","limit":"messages","retry_after":30}"#);
    // The connection stays open: pings still answered.
    c.send(Message::Ping(vec![1].into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
    s.served.stop().await;
}

#[actix_web::test]
async fn the_close_action_closes_4429_and_kinds_are_limited_apart() {
    let limits = MessageLimits::new()
        .messages("100/min".parse().unwrap())
        .kind("catch_up", "1/min".parse().unwrap())
        .classifier(JsonFieldClassifier::new("action", ["catch_up"]))
        .on_exceed(MessageAction::Close);
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), limits, None);
    let mut c = connect(s.addr()).await.unwrap();
    let catch_up = r#"{"action":"catch_up"}"#;
    echoed(&mut c, catch_up).await;
    echoed(&mut c, r#"{"action":"say"}"#).await;
    c.send(Message::text(catch_up)).await.unwrap();
    let close = next(&mut c).await;
    assert_eq!(close_code(&close), Some(4429), "{close:?}");
    s.all_released().await;
    s.served.stop().await;
}

#[actix_web::test]
async fn a_message_over_the_largest_closes_1009_also_in_continuation_frames() {
    let limits = MessageLimits::new().max_message_size(1024);
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), limits, None);
    // One frame over the limit.
    let mut c = connect(s.addr()).await.unwrap();
    echoed(&mut c, &"a".repeat(1024)).await;
    c.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    assert_eq!(close_code(&next(&mut c).await), Some(1009));
    // Three frames of 400 bytes: each under the limit, together over it.
    let mut c = connect(s.addr()).await.unwrap();
    let frame = |opcode, fin| Message::Frame(Frame::message(vec![b'x'; 400], opcode, fin));
    c.send(frame(OpCode::Data(Data::Text), false)).await.unwrap();
    c.send(frame(OpCode::Data(Data::Continue), false)).await.unwrap();
    c.send(frame(OpCode::Data(Data::Continue), true)).await.unwrap();
    let close = next(&mut c).await;
    assert_eq!(close_code(&close), Some(1009), "{close:?}");
    // Two frames within the limit come out as one message.
    let mut c = connect(s.addr()).await.unwrap();
    c.send(frame(OpCode::Data(Data::Text), false)).await.unwrap();
    c.send(frame(OpCode::Data(Data::Continue), true)).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("x".repeat(800)));
    // A frame far over the codec's cap (set to the limit) is answered with 1009, not a reset.
    let mut c = connect(s.addr()).await.unwrap();
    c.send(Message::binary(vec![0u8; 100_000])).await.unwrap();
    assert_eq!(close_code(&next(&mut c).await), Some(1009));
    s.served.stop().await;
}

/// Without a largest message, the socket takes what tungstenite takes by default (64 MiB messages,
/// 16 MiB frames), as on warp and axum: a 100 KiB message, over actix-ws's own 64 KiB frame cap,
/// is echoed, and so is a 2 MiB message in three frames, over actix-ws's 1 MiB of continuations.
#[actix_web::test]
async fn without_a_largest_message_the_caps_are_tungstenites() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), MessageLimits::new(), None);
    // What came back, shortened: the message's length, or the close frame.
    let back = |message: Message| match message {
        Message::Text(text) => Ok(text.len()),
        other => Err(format!("{other:?}")),
    };
    let mut c = connect(s.addr()).await.unwrap();
    c.send(Message::text("m".repeat(100 * 1024))).await.unwrap();
    assert_eq!(back(next(&mut c).await), Ok(100 * 1024));
    let part = 700 * 1024;
    let frame = |opcode, fin| Message::Frame(Frame::message(vec![b'f'; part], opcode, fin));
    c.send(frame(OpCode::Data(Data::Text), false)).await.unwrap();
    c.send(frame(OpCode::Data(Data::Continue), false)).await.unwrap();
    c.send(frame(OpCode::Data(Data::Continue), true)).await.unwrap();
    assert_eq!(back(next(&mut c).await), Ok(3 * part));
    s.served.stop().await;
}

#[actix_web::test]
async fn a_ping_flood_closes_1008() {
    let limits = MessageLimits::new().control(Some("2/min".parse().unwrap()));
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), limits, None);
    let mut c = connect(s.addr()).await.unwrap();
    for _ in 0..3 {
        c.send(Message::Ping(vec![7].into())).await.unwrap();
    }
    let close = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap().unwrap();
        if !matches!(m, Message::Pong(_)) {
            break m;
        }
    };
    assert_eq!(close_code(&close), Some(u16::from(CloseCode::Policy)), "{close:?}");
    s.served.stop().await;
}

#[actix_web::test]
async fn the_delay_action_holds_a_message_until_it_fits() {
    let limits = MessageLimits::new()
        .messages("5/s burst 1".parse().unwrap())
        .on_exceed(MessageAction::Delay { max_wait: Duration::from_secs(2) });
    let s = server(ConcurrencyLimiter::new("ws").per_key(5), limits, None);
    let mut c = connect(s.addr()).await.unwrap();
    let started = Instant::now();
    for i in 0..3 {
        c.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(next(&mut c).await, Message::text(format!("m{i}")));
    }
    assert!(started.elapsed() >= Duration::from_millis(350), "held: {:?}", started.elapsed());
    s.served.stop().await;
}

#[actix_web::test]
async fn without_websocket_limits_the_handler_answers_500() {
    let served = serve!(1, || App::new().route("/ws", web::get().to(echo)));
    let (status, _) = refused(connect(served.addr).await);
    assert_eq!(status, 500);
    // The core's answer, the same on every adapter.
    let reply = common::get(served.addr, "/ws", "").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.text(), r#"{"error":"websocket_limits_missing"}"#);
    served.stop().await;
}
