//! The middleware outside axum: a plain hyper server, and a tonic gRPC server with a real tonic
//! client, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::get_ok;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tollgate::{KeyKind, Limit, Policy};
use tollgate_tower::{RateLimitLayer, RequestBody};
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

fn policy(key: KeyKind, quota: &str) -> Policy {
    Policy::builder("api").limit(Limit::new("per_client", quota.parse().unwrap()).key(key)).build().unwrap()
}

/// A hyper HTTP/1 server: each connection's service puts the peer address in the request
/// extensions (the middleware's client-IP key reads it), then the rate limit, then the handler.
async fn serve_hyper(layer: RateLimitLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = ServiceBuilder::new()
                .map_request(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(peer);
                    request
                })
                .layer(layer.clone())
                .service_fn(|_: Request<RequestBody<Incoming>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
            );
        }
    });
    addr
}

#[tokio::test]
async fn plain_hyper_server_limits_by_peer_address() {
    let addr = serve_hyper(RateLimitLayer::new(policy(KeyKind::ip(), "2/min"))).await;
    for remaining in ["1", "0"] {
        let ok = get_ok(addr, "/").await;
        assert_eq!((ok.status, ok.text()), (StatusCode::OK, "hi"));
        assert_eq!(ok.header("x-ratelimit-remaining"), remaining);
    }
    let refused = get_ok(addr, "/").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "30");
    assert_eq!(refused.text(), r#"{"error":"rate_limited","policy":"api","limit":"per_client","retry_after":30}"#);
}

/// gRPC clients read `grpc-status`, not the HTTP status: a refusal becomes a trailers-only gRPC
/// response with `RESOURCE_EXHAUSTED` (8), keeping the rate-limit headers as metadata.
fn grpc_refusal(decision: &tollgate::Decision, mut response: Response<Bytes>) -> Response<Bytes> {
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = Bytes::new();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(tonic::Code::ResourceExhausted as i32));
    let message = format!("rate limited by {}; retry in {} s", decision.policy, decision.retry_after_secs());
    if let Ok(message) = HeaderValue::try_from(message) {
        headers.insert("grpc-message", message);
    }
    response
}

#[tokio::test]
async fn tonic_server_limits_calls_and_the_client_sees_resource_exhausted() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let key = KeyKind::Header(http::HeaderName::from_static("x-api-key"));
    let layer = RateLimitLayer::new(policy(key, "3/min")).on_refusal(grpc_refusal);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let call = |key: &'static str| {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.metadata_mut().insert("x-api-key", key.parse().unwrap());
        request
    };
    for remaining in ["2", "1", "0"] {
        let response = client.check(call("alice")).await.unwrap();
        assert_eq!(response.metadata().get("x-ratelimit-remaining").unwrap(), remaining);
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    }
    let refused = client.check(call("alice")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(refused.message(), "rate limited by api; retry in 20 s");
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "20");
    assert!(client.check(call("bob")).await.is_ok(), "another key has its own quota");
}

/// A gRPC call is an HTTP/2 POST without `Content-Length` (`te: trailers`, a length-prefixed
/// message in DATA frames): its bytes are charged as tonic reads them, not the route's largest
/// body; a call that passes the budget while it streams gets `RESOURCE_EXHAUSTED` through the
/// refusal hook, as any refusal.
#[tokio::test]
async fn grpc_calls_are_charged_the_bytes_of_their_messages() {
    let (reporter, health) = tonic_health::server::health_reporter();
    let long_name = "s".repeat(1000);
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status(&long_name, tonic_health::ServingStatus::Serving).await;
    let key = KeyKind::Header(http::HeaderName::from_static("x-api-key"));
    let bytes = Policy::builder("body_bytes")
        .limit(Limit::new("body_bytes", "2KiB/day".parse().unwrap()).key(key))
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_limits(tollgate_tower::Limits::new())
        .route("/grpc.health.v1.Health/Check", tollgate_tower::Limits::new().max_body(1024).body_bytes(bytes))
        .on_refusal(grpc_refusal);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = HealthClient::new(channel);
    let call = |service: &str| {
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
        request.metadata_mut().insert("x-api-key", "alice".parse().unwrap());
        request
    };
    // Each call's body is the 5-byte gRPC frame header and an empty message: 100 bytes in all
    // (charged 1 KiB each, the third call would be refused).
    for i in 0..20 {
        let response = client.check(call("")).await.unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
    }
    // 1008 bytes (a 1000-byte name, its field tag and length, the frame header): 1108 of 2048.
    assert!(client.check(call(&long_name)).await.is_ok());
    // 1008 more pass the budget while the body streams.
    let refused = client.check(call(&long_name)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().starts_with("rate limited by body_bytes"), "{}", refused.message());
    // What is left (940 bytes) still takes small calls.
    assert!(client.check(call("")).await.is_ok());
}
