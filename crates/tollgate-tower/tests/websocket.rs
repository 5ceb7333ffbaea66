//! WebSocket upgrade guard and message limits over real sockets with tokio-tungstenite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::Message as AxumMessage;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tollgate::config::Config;
use tollgate::websocket::{JsonFieldClassifier, MessageAction, MessageLimits};
use tollgate::{ConcurrencyLimiter, Key, KeyKind, Limit, Policy};
use tollgate_tower::{LimitedUpgrade, Limits, RateLimitLayer, WebSocketLimits};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn echo(upgrade: LimitedUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.next().await {
            if let AxumMessage::Text(ref t) = message
                && t.as_str() == "panic"
            {
                panic!("the handler panics");
            }
            if matches!(message, AxumMessage::Close(_)) {
                break;
            }
            if matches!(message, AxumMessage::Text(_) | AxumMessage::Binary(_)) && socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

struct Server {
    addr: SocketAddr,
    connections: ConcurrencyLimiter,
}

async fn server(connections: ConcurrencyLimiter, messages: MessageLimits, rate: Option<&str>) -> Server {
    let mut limits = Limits::new().websocket(WebSocketLimits::new(connections.clone(), messages));
    if let Some(rate) = rate {
        let policy = Policy::builder("ws")
            .limit(Limit::new("connections", rate.parse().unwrap()).key(KeyKind::ip()))
            .build()
            .unwrap();
        limits = limits.policy(policy);
    }
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::with_limits(limits));
    Server { addr: common::serve(app).await, connections }
}

async fn connect(addr: SocketAddr) -> Result<Client, WsError> {
    let (socket, _) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(format!("ws://{addr}/ws")))
            .await
            .expect("the handshake timed out")?;
    Ok(socket)
}

/// A client whose upgrade request carries `x-client: <client>`.
async fn connect_as(addr: SocketAddr, client: &str) -> Result<Client, WsError> {
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request.headers_mut().insert("x-client", HeaderValue::from_str(client).unwrap());
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake timed out")?;
    Ok(socket)
}

fn x_client() -> KeyKind {
    KeyKind::Header(HeaderName::from_static("x-client"))
}

/// Sends `text` and expects it echoed.
async fn echoed(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    assert_eq!(next(client).await, Message::text(text));
}

fn refused_status(result: Result<Client, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => {
            let retry =
                response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (response.status().as_u16(), retry)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a socket"),
    }
}

/// The next data or close message (pings and pongs skipped), within a bound.
async fn next(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no message in time")
            .expect("the stream ended")
            .expect("a socket error");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn wait_for_in_use(limiter: &ConcurrencyLimiter, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while limiter.in_use() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("in use stayed {} (wanted {n})", limiter.in_use()));
}

#[tokio::test]
async fn concurrent_upgrades_refused_then_accepted_after_a_close() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(2), MessageLimits::new(), None).await;
    let mut a = connect(s.addr).await.unwrap();
    let _b = connect(s.addr).await.unwrap();
    // The lease lives with the socket, not the 101.
    wait_for_in_use(&s.connections, 2).await;
    assert_eq!(refused_status(connect(s.addr).await), (429, "1".into()));
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = a.next().await {}
    wait_for_in_use(&s.connections, 1).await;
    let mut c = connect(s.addr).await.unwrap();
    c.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("hi"));
}

#[tokio::test]
async fn lease_released_after_an_abrupt_tcp_reset() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), MessageLimits::new(), None).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", s.addr), stream).await.unwrap();
    wait_for_in_use(&s.connections, 1).await;
    assert_eq!(refused_status(connect(s.addr).await).0, 429);
    // Vanish without a close frame: SO_LINGER 0 makes the close a reset.
    let stream = socket.into_inner();
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    wait_for_in_use(&s.connections, 0).await;
    assert!(connect(s.addr).await.is_ok());
}

#[tokio::test]
async fn global_cap_answers_503() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(5).global(1), MessageLimits::new(), None).await;
    let _a = connect(s.addr).await.unwrap();
    wait_for_in_use(&s.connections, 1).await;
    assert_eq!(refused_status(connect(s.addr).await).0, 503);
}

#[tokio::test]
async fn connection_rate_answers_429_with_headers() {
    let s = server(ConcurrencyLimiter::new("ws"), MessageLimits::new(), Some("2/min")).await;
    let _a = connect(s.addr).await.unwrap();
    let _b = connect(s.addr).await.unwrap();
    assert_eq!(refused_status(connect(s.addr).await), (429, "30".into()));
}

#[tokio::test]
async fn handler_panic_releases_its_lease() {
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), MessageLimits::new(), None).await;
    let mut a = connect(s.addr).await.unwrap();
    a.send(Message::text("panic")).await.unwrap();
    wait_for_in_use(&s.connections, 0).await;
    assert!(connect(s.addr).await.is_ok());
}

#[tokio::test]
async fn message_rate_drops_with_an_error_frame() {
    let limits = MessageLimits::new().messages("3/min".parse().unwrap());
    let s = server(ConcurrencyLimiter::new("ws"), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    for i in 0..4 {
        c.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(next(&mut c).await, Message::text(format!("m{i}")));
    }
    assert_eq!(next(&mut c).await, Message::text(r#"{"error":"rate_limited","limit":"messages","retry_after":20}"#));
    // The connection stays open.
    c.send(Message::Ping(vec![1].into())).await.unwrap();
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let limits = MessageLimits::new().max_message_size(1024);
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    c.send(Message::binary(vec![0u8; 1024])).await.unwrap();
    assert_eq!(next(&mut c).await, Message::binary(vec![0u8; 1024]));
    c.send(Message::binary(vec![0u8; 2048])).await.unwrap();
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(frame.code, CloseCode::Size);
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.len() <= 123);
    wait_for_in_use(&s.connections, 0).await;
}

#[tokio::test]
async fn far_oversized_message_closes_1009_too() {
    // Far over the limit and over every buffer on the way: the socket refuses it from its
    // header and the server closes without reading the payload, so the client's send may fail
    // with a reset; the close frame sent before it is still there to read.
    let limits = MessageLimits::new().max_message_size(1024);
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    if let Err(e) = c.send(Message::binary(vec![0u8; 8 * 1024 * 1024])).await {
        assert!(matches!(e, WsError::Io(_)), "{e:?}");
    }
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(frame.reason.as_str(), "message of 8388608 bytes over the limit of 1024");
    wait_for_in_use(&s.connections, 0).await;
}

#[tokio::test]
async fn pings_up_to_the_protocols_125_bytes_pass_a_smaller_message_limit() {
    // The socket's frame cap is the message limit, but never below what a control frame may
    // carry: a ping is not a message, and the gate does not size it.
    let limits = MessageLimits::new().max_message_size(64);
    let s = server(ConcurrencyLimiter::new("ws").per_key(1), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    c.send(Message::Ping(vec![7u8; 125].into())).await.unwrap();
    c.send(Message::text("after the ping")).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next()).await.expect("no answer").unwrap().unwrap();
        match m {
            Message::Pong(p) => assert_eq!(p.len(), 125),
            Message::Text(t) => break assert_eq!(t.as_str(), "after the ping"),
            other => panic!("{other:?}"),
        }
    }
    c.send(Message::binary(vec![0u8; 65])).await.unwrap();
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 1009);
}

#[tokio::test]
async fn per_kind_limit_catch_up() {
    let limits = MessageLimits::new()
        .messages("20/10s".parse().unwrap())
        .kind("catch_up", "2/min".parse().unwrap())
        .classifier(JsonFieldClassifier::new("action", ["catch_up"]));
    let s = server(ConcurrencyLimiter::new("ws"), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    let catch_up = r#"{"action":"catch_up","since":0}"#;
    for _ in 0..3 {
        c.send(Message::text(catch_up)).await.unwrap();
    }
    c.send(Message::text(r#"{"action":"say"}"#)).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text(catch_up));
    assert_eq!(next(&mut c).await, Message::text(catch_up));
    assert_eq!(next(&mut c).await, Message::text(r#"{"error":"rate_limited","limit":"catch_up","retry_after":30}"#));
    assert_eq!(next(&mut c).await, Message::text(r#"{"action":"say"}"#));
}

#[tokio::test]
async fn close_action_sends_4429() {
    let limits = MessageLimits::new().messages("1/min".parse().unwrap()).on_exceed(MessageAction::Close);
    let s = server(ConcurrencyLimiter::new("ws"), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    c.send(Message::text("a")).await.unwrap();
    c.send(Message::text("b")).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("a"));
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 4429);
    assert_eq!(frame.reason.as_str(), "rate limited: messages (retry after 60s)");
}

#[tokio::test]
async fn ping_flood_closes_1008() {
    let limits = MessageLimits::new().control(Some("3/min".parse().unwrap()));
    let s = server(ConcurrencyLimiter::new("ws"), limits, None).await;
    let mut c = connect(s.addr).await.unwrap();
    for _ in 0..4 {
        c.send(Message::Ping(vec![7].into())).await.unwrap();
    }
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 1008);
}

#[tokio::test]
async fn connection_leases_are_counted_by_the_websocket_key() {
    let connections = ConcurrencyLimiter::new("ws").per_key(1);
    let ws = WebSocketLimits::new(connections.clone(), MessageLimits::new()).key(x_client());
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::with_limits(Limits::new().websocket(ws)));
    let addr = common::serve(app).await;
    // All clients come from 127.0.0.1: by IP (the layer's default) the second would be refused.
    let mut a = connect_as(addr, "a").await.unwrap();
    wait_for_in_use(&connections, 1).await;
    assert_eq!(connections.in_use_by(Key::Bytes(b"a")), 1);
    assert_eq!(refused_status(connect_as(addr, "a").await), (429, "1".into()));
    let mut b = connect_as(addr, "b").await.unwrap();
    wait_for_in_use(&connections, 2).await;
    echoed(&mut a, "from a").await;
    echoed(&mut b, "from b").await;
    // A client without the header is counted under one shared key, not let through.
    let _anonymous = connect(addr).await.unwrap();
    assert_eq!(refused_status(connect(addr).await).0, 429);
}

#[tokio::test]
async fn per_key_messages_are_shared_by_a_clients_connections() {
    let limits = MessageLimits::new().messages("10/min".parse().unwrap()).per_key_messages("3/min".parse().unwrap());
    let ws = WebSocketLimits::new(ConcurrencyLimiter::new("ws"), limits).key(x_client());
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::with_limits(Limits::new().websocket(ws)));
    let addr = common::serve(app).await;
    let mut a1 = connect_as(addr, "a").await.unwrap();
    let mut a2 = connect_as(addr, "a").await.unwrap();
    let mut b = connect_as(addr, "b").await.unwrap();
    echoed(&mut a1, "1").await;
    echoed(&mut a2, "2").await;
    echoed(&mut a1, "3").await;
    // Each socket is well within its own 10/min, but client a has spent its 3/min.
    a2.send(Message::text("4")).await.unwrap();
    assert_eq!(
        next(&mut a2).await,
        Message::text(r#"{"error":"rate_limited","limit":"key_messages","retry_after":20}"#)
    );
    a1.send(Message::text("5")).await.unwrap();
    assert_eq!(
        next(&mut a1).await,
        Message::text(r#"{"error":"rate_limited","limit":"key_messages","retry_after":20}"#)
    );
    // Client b is unaffected.
    for i in 0..3 {
        echoed(&mut b, &format!("b{i}")).await;
    }
    // A new socket of client a does not bring a fresh quota.
    let mut a3 = connect_as(addr, "a").await.unwrap();
    a3.send(Message::text("6")).await.unwrap();
    assert!(matches!(next(&mut a3).await, Message::Text(t) if t.contains("key_messages")));
}

#[tokio::test]
async fn per_key_limits_fall_back_to_the_layers_lease_key() {
    // No key on the route: the layer's lease key (the client IP) counts both leases and
    // messages, so two loopback sockets share one quota.
    let limits = MessageLimits::new().per_key_messages("2/min".parse().unwrap());
    let connections = ConcurrencyLimiter::new("ws").per_key(5);
    let layer = RateLimitLayer::with_limits(Limits::new().websocket(WebSocketLimits::new(connections.clone(), limits)));
    let addr = common::serve(Router::new().route("/ws", get(echo)).layer(layer)).await;
    let mut a = connect(addr).await.unwrap();
    let mut b = connect(addr).await.unwrap();
    wait_for_in_use(&connections, 2).await;
    assert_eq!(connections.in_use_by(Key::Ip("127.0.0.1".parse().unwrap())), 2);
    echoed(&mut a, "1").await;
    echoed(&mut b, "2").await;
    b.send(Message::text("3")).await.unwrap();
    assert!(matches!(next(&mut b).await, Message::Text(t) if t.contains("key_messages")));

    // The layer's lease key chosen by the application applies the same way.
    let limits = MessageLimits::new().per_key_messages("1/min".parse().unwrap());
    let layer = RateLimitLayer::with_limits(
        Limits::new().websocket(WebSocketLimits::new(ConcurrencyLimiter::new("ws"), limits)),
    )
    .lease_key(x_client());
    let addr = common::serve(Router::new().route("/ws", get(echo)).layer(layer)).await;
    let mut a = connect_as(addr, "a").await.unwrap();
    let mut b = connect_as(addr, "b").await.unwrap();
    echoed(&mut a, "1").await;
    echoed(&mut b, "2").await;
}

#[tokio::test]
async fn per_key_close_action_sends_4429() {
    let limits = MessageLimits::new().per_key_messages("1/min".parse().unwrap()).on_exceed(MessageAction::Close);
    let connections = ConcurrencyLimiter::new("ws");
    let ws = WebSocketLimits::new(connections.clone(), limits).key(x_client());
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::with_limits(Limits::new().websocket(ws)));
    let addr = common::serve(app).await;
    let mut a1 = connect_as(addr, "a").await.unwrap();
    let mut a2 = connect_as(addr, "a").await.unwrap();
    let mut b = connect_as(addr, "b").await.unwrap();
    echoed(&mut a1, "1").await;
    a2.send(Message::text("2")).await.unwrap();
    let Message::Close(Some(frame)) = next(&mut a2).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 4429);
    assert_eq!(frame.reason.as_str(), "rate limited: key_messages (retry after 60s)");
    echoed(&mut b, "b").await;
    // The closed socket gave its lease back; the others hold theirs.
    wait_for_in_use(&connections, 2).await;
}

/// The demo's `[[websocket]]` entry, keyed by a header and with per-key limits, read by the core
/// and applied by the layer.
const WS_CONFIG: &str = r#"
[[websocket]]
path = "/ws"
key = "header:x-client"
connections = "10/min"
concurrent_per_key = 2
messages = "10/min"
key_messages = "3/min"
key_bytes = "1KiB/min"
max_message = "16KiB"
kinds = [{ name = "catch_up", field = "action", equals = "catch_up", key_quota = "1/min" }]
"#;

#[tokio::test]
async fn config_websocket_key_counts_leases_and_per_key_limits() {
    let config: Config = WS_CONFIG.parse().unwrap();
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::from_config(&config).unwrap());
    let addr = common::serve(app).await;
    let mut a1 = connect_as(addr, "a").await.unwrap();
    let mut a2 = connect_as(addr, "a").await.unwrap();
    let (status, _) = refused_status(connect_as(addr, "a").await);
    assert_eq!(status, 429, "concurrent_per_key = 2 for client a");
    let mut b = connect_as(addr, "b").await.unwrap();

    let catch_up = r#"{"action":"catch_up"}"#;
    echoed(&mut a1, catch_up).await;
    a2.send(Message::text(catch_up)).await.unwrap();
    assert_eq!(next(&mut a2).await, Message::text(r#"{"error":"rate_limited","limit":"catch_up","retry_after":60}"#));
    echoed(&mut a2, "2").await;
    echoed(&mut a1, "3").await;
    a2.send(Message::text("4")).await.unwrap();
    assert!(matches!(next(&mut a2).await, Message::Text(t) if t.contains(r#""limit":"key_messages""#)));

    echoed(&mut b, catch_up).await;
    echoed(&mut b, &"x".repeat(900)).await;
    b.send(Message::text("y".repeat(200))).await.unwrap();
    assert!(matches!(next(&mut b).await, Message::Text(t) if t.contains(r#""limit":"key_bytes""#)));
}

/// A bare tokio-tungstenite echo server (text only) on a loopback port, its socket (with
/// `config`) wrapped in a `LimitedWebSocket` with `limits`; a client connected to it.
#[cfg(feature = "tungstenite")]
async fn tungstenite_server(
    limits: MessageLimits,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
) -> Client {
    use tollgate_tower::LimitedWebSocket;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = std::sync::Arc::new(limits);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let socket = tokio_tungstenite::accept_async_with_config(tcp, config).await.unwrap();
        let mut socket = LimitedWebSocket::new(socket, limits);
        while let Some(Ok(m)) = socket.next().await {
            if m.is_text() && socket.send(m).await.is_err() {
                break;
            }
        }
    });
    tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.unwrap().0
}

#[cfg(feature = "tungstenite")]
#[tokio::test]
async fn generic_wrapper_around_tungstenite_stream() {
    let mut c = tungstenite_server(MessageLimits::new().messages("1/min".parse().unwrap()), None).await;
    c.send(Message::text("one")).await.unwrap();
    c.send(Message::text("two")).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("one"));
    assert_eq!(next(&mut c).await, Message::text(r#"{"error":"rate_limited","limit":"messages","retry_after":60}"#));
}

#[cfg(feature = "tungstenite")]
#[tokio::test]
async fn generic_wrapper_closes_1009_over_the_sockets_own_cap() {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    // The gate has no size limit; the tungstenite socket's own cap refuses the message.
    let config = WebSocketConfig::default().max_message_size(Some(512)).max_frame_size(Some(512));
    let mut c = tungstenite_server(MessageLimits::new().messages("100/min".parse().unwrap()), Some(config)).await;
    c.send(Message::text("small")).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("small"));
    c.send(Message::text("x".repeat(600))).await.unwrap();
    let Message::Close(Some(frame)) = next(&mut c).await else { panic!("expected a close frame") };
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(frame.reason.as_str(), "message of 600 bytes over the limit of 512");
}

/// A socket whose errors are boxed (not `std::error::Error` themselves) is limited too: the
/// wrapper asks only that its error type be `'static`. A stand-in socket: no framework at hand
/// has such errors.
#[cfg(feature = "tungstenite")]
#[tokio::test]
async fn a_socket_with_boxed_errors_is_limited_too() {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tollgate_tower::LimitedWebSocket;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    struct Boxed(Vec<Message>);
    impl futures_util::Stream for Boxed {
        type Item = Result<Message, BoxError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop().map(Ok))
        }
    }
    impl futures_util::Sink<Message> for Boxed {
        type Error = BoxError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), BoxError> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
    }
    let limits = std::sync::Arc::new(MessageLimits::new().messages("1/min".parse().unwrap()));
    let socket = Boxed(vec![Message::text("c"), Message::text("b"), Message::text("a")]);
    let mut socket = LimitedWebSocket::<_, Message>::new(socket, limits);
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("a"));
    // "b" is dropped with an error frame (sent into the stand-in), "c" likewise; then the end.
    assert!(socket.next().await.is_none());
}

#[tokio::test]
async fn an_upgrade_on_a_route_without_websocket_limits_gets_the_cores_500() {
    let app = Router::new().route("/ws", get(echo)).layer(RateLimitLayer::with_limits(Limits::new()));
    let addr = common::serve(app).await;
    match connect(addr).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 500);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = response.body().as_deref().unwrap_or_default();
            assert_eq!(body, br#"{"error":"websocket_limits_missing"}"#);
        }
        Err(other) => panic!("expected a 500, got {other}"),
        Ok(_) => panic!("a socket opened without limits"),
    }
}

#[tokio::test]
async fn an_adaptive_limit_caps_open_sockets_and_learns_from_the_upgrades() {
    // AIMD over a threshold every upgrade exceeds, every response a window of its own: each
    // upgrade's latency (recorded when the 101 is sent, not when the socket closes) backs the cap
    // off by one, from 4.
    let limit = tollgate::AdaptiveLimit::aimd(Duration::from_nanos(1))
        .bounds(1, 10)
        .initial(4)
        .window(Duration::from_nanos(1))
        .min_samples(1)
        .build()
        .unwrap();
    let s = server(ConcurrencyLimiter::new("ws").adaptive(limit.clone()), MessageLimits::new(), None).await;
    let mut a = connect(s.addr).await.unwrap();
    let b = connect(s.addr).await.unwrap();
    assert_eq!(
        (limit.current(), s.connections.in_use()),
        (2, 2),
        "two upgrades measured; the sockets hold their places"
    );
    assert!(limit.latency().is_some_and(|l| l > Duration::ZERO && l < Duration::from_secs(10)));
    // Two open, a cap of 2: the server is at what it takes now (503, not the client's 429).
    assert_eq!(refused_status(connect(s.addr).await), (503, "1".to_owned()));
    echoed(&mut a, "still served").await;
    drop((a, b));
    wait_for_in_use(&s.connections, 0).await;
    let _c = connect(s.addr).await.unwrap();
    assert_eq!(limit.current(), 1);
    assert_eq!(refused_status(connect(s.addr).await).0, 503);
}
