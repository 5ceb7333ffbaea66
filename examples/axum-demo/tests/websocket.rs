//! The demo's built-in WebSocket limits over real sockets: open connections per client, and the
//! per-client message quota shared by all of its connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tollgate::config::Config;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn demo() -> SocketAddr {
    let config: Config = axum_demo::DEFAULT_CONFIG.parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum_demo::serve(listener, axum_demo::app(&config).unwrap()));
    addr
}

async fn connect(addr: SocketAddr) -> Result<Client, WsError> {
    let connecting = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"));
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting).await.expect("handshake timed out")?;
    Ok(socket)
}

async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no message in time")
            .expect("the stream ended")
            .expect("a socket error");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    }
}

/// Sends `n` messages, then reads `n` replies.
async fn burst(client: &mut Client, n: usize) -> Vec<String> {
    for i in 0..n {
        client.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(next_text(client).await);
    }
    replies
}

#[tokio::test]
async fn three_sockets_per_client_sharing_one_message_quota() {
    let addr = demo().await;
    let mut a = connect(addr).await.unwrap();
    let mut b = connect(addr).await.unwrap();
    let mut c = connect(addr).await.unwrap();
    match connect(addr).await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 429, "concurrent_per_key = 3"),
        Err(other) => panic!("expected a 429, got {other}"),
        Ok(_) => panic!("a fourth socket was accepted"),
    }
    // 20 per socket (its own quota) on two sockets: the client's 40 per 10 s are spent.
    for socket in [&mut a, &mut b] {
        let replies = burst(socket, 20).await;
        assert!(replies.iter().all(|r| r.starts_with('m')), "{replies:?}");
    }
    // The third socket's own quota is untouched, but the client's is not: refused per key
    // (4 per second come back, so a slow machine may see a few pass first).
    let replies = burst(&mut c, 10).await;
    let refused = replies.iter().filter(|r| r.contains(r#""limit":"key_messages""#)).count();
    assert!(refused >= 1, "{replies:?}");
    assert!(replies.iter().all(|r| r.starts_with('m') || r.contains("key_messages")), "{replies:?}");
}
