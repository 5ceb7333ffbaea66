//! The HTTP middleware: [`RateLimitLayer`] and [`RateLimit`], the core's
//! [engine](tollgate::engine) as a tower middleware: it builds the engine's view of each request,
//! asks the engine, and applies the plan.
//!
//! For each request, in order, the limits of its route (or the default ones) are checked: the
//! body size (413 when its declared length is over the largest body), the request
//! [policy](tollgate::Policy) (cost 1, all of its limits or none), the body bytes per period
//! (429), and the concurrency leases — in-flight requests, held until
//! the response body is finished or dropped, and WebSocket connections, moved into the upgraded
//! socket (see [`crate::websocket`]). A refusal spends nothing from the checks after it; the
//! checks before it are not given back (a request the concurrency limit refuses has spent one
//! from the request policy), as stores have no refund. A refusal is a response, rendered by the
//! core's [`HeaderOptions`](tollgate::HeaderOptions): status, `Retry-After`, rate-limit headers
//! and a JSON body; allowed responses carry the same rate-limit headers. With the delay action
//! the request waits (up to the limit's bound) instead of being refused.
//!
//! The body is counted while it streams ([`RequestBody`]): past the largest body it is cut off
//! and the response is the core's 413. A body of unknown length — an HTTP/2 request without
//! `Content-Length`, as every HTTP/2 GET and gRPC call is, or a chunked HTTP/1 upload — is
//! charged to the body-bytes limit as the application reads it, part by part: a GET costs
//! nothing, an upload what it turns out to be, and one that passes the budget is cut off there
//! and answered with the core's 429 (its parts read before stay charged). It is never refused
//! 411 nor charged the route's largest body. A body whose length is known up front
//! (`Content-Length`, or the body's exact size hint with `RateLimitLayer::axum_body`) is
//! charged it before the application is called.
//!
//! The in-memory store decides inline, with nothing boxed on the allow path; a remote store's
//! check runs in a boxed future.
//!
//! In axum, the layer can go inside the router or around it:
//! - `Router::layer` / `route_layer` runs it after routing: it sees axum's matched path (for
//!   [`KeyKind::Route`](tollgate::KeyKind::Route) keys), and axum boxes each layered route once
//!   more, which costs any layer about a thousand instructions and three allocations per request.
//! - Around the router, `layer.layer(router)` served with `axum::ServiceExt::into_make_service_with_connect_info`,
//!   runs it before routing: none of that cost; the layer matches the URI's path against its
//!   own [`RateLimitLayer::route`] patterns, and the pattern matched is the route key.
//!
//! ```
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use tollgate::{KeyKind, Limit, Policy};
//! use tollgate_tower::RateLimitLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let policy = Policy::builder("api")
//!     .limit(Limit::new("per_ip", "2/min".parse()?).key(KeyKind::ip()))
//!     .build()?;
//! let mut service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(policy))
//!     .service_fn(|_req: Request<_>| async { Ok::<_, std::convert::Infallible>(Response::new(String::from("hello"))) });
//!
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     req.extensions_mut().insert("203.0.113.9:50000".parse::<SocketAddr>().unwrap());
//!     req
//! };
//! let ok = service.ready().await?.call(request()).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//! assert_eq!(ok.headers()["x-ratelimit-remaining"], "1");
//! service.ready().await?.call(request()).await?;
//!
//! let refused = service.ready().await?.call(request()).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "30");
//! assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod bodies;
mod body;
mod future;
mod layer;
mod service;

#[cfg(feature = "axum")]
pub use bodies::AxumBody;
pub use bodies::{Bodies, BoxError, RequestBodies, ResponseBodies, Wrapped};
pub use body::{BodyError, RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::{RateLimitLayer, RefusalHook};
pub use service::RateLimit;
pub use tollgate::engine::{Limits, WebSocketLimits};
