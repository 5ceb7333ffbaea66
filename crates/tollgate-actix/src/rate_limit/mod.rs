//! The HTTP middleware: [`RateLimit`], the core's [engine](tollgate::engine) as an actix-web
//! middleware (`Transform` + `Service`): it builds the engine's view of each request, asks the
//! engine, and applies the plan.
//!
//! For each request, in order, the limits of its route (or the default ones) are checked: the
//! body size (413 when its `Content-Length` is over the largest body, before the handler runs),
//! the request [policy](tollgate::Policy) (cost 1, all of its limits or none), the body bytes
//! per period (429), and the concurrency leases — in-flight requests, held until the response
//! body is finished or dropped, and WebSocket connections, put in the request extensions as an
//! [`UpgradeLease`](tollgate::websocket::UpgradeLease) for the handler (see `crate::ws`, feature
//! `ws`).
//!
//! The payload is counted while it streams, by the core's
//! [`BodyCounter`](tollgate::engine::BodyCounter): the read that passes the largest body is
//! `PayloadError::Overflow`. A payload of unknown length — a chunked upload, or an HTTP/2
//! request without `Content-Length` when actix-web serves HTTP/2 — is charged to the body-bytes
//! limit chunk by chunk as the handler reads it: a request without a body costs nothing, an
//! upload what it turns out to be, never the route's largest body, and it is never refused 411;
//! the chunk that passes the budget is a `PayloadError::Io` (the chunks before it stay charged).
//! The payload ends after its error, and whatever the handler answers — also a handler that
//! skips the error and takes the end for the whole body — is replaced by the core's refusal:
//! the same JSON 413 as for a `Content-Length` over the largest body, or the body-bytes limit's
//! 429 with its rate-limit headers (through [`RateLimit::on_refusal`]); the request's in-flight
//! place is given back. A `Content-Length` is charged before the handler runs.
//!
//! A refusal is a normal response — `Ok(ServiceResponse)` with the right side of an
//! [`EitherBody`](actix_web::body::EitherBody), never an `Err` — and the inner service is not
//! called: status, `Retry-After`, rate-limit headers and a JSON body rendered by the core's
//! [`HeaderOptions`](tollgate::HeaderOptions), or what [`RateLimit::on_refusal`] makes of them.
//! Allowed responses carry the same rate-limit headers. With the delay action the request waits
//! (up to the limit's bound) instead of being refused.
//!
//! The in-memory store decides inside `call`, with nothing boxed on the allow path; a remote
//! store's check (Redis) runs in a boxed future.
//!
//! ```
//! use actix_web::{App, HttpResponse, http::StatusCode, test, web};
//! use tollgate::{KeyKind, Limit, Policy};
//! use tollgate_actix::RateLimit;
//!
//! # actix_web::rt::System::new().block_on(async {
//! let policy = Policy::builder("api").limit(Limit::new("per_ip", "2/min".parse()?).key(KeyKind::ip())).build()?;
//! let app = test::init_service(
//!     App::new().wrap(RateLimit::new(policy)).route("/", web::get().to(|| async { HttpResponse::Ok().body("hello") })),
//! )
//! .await;
//! let request = || test::TestRequest::get().uri("/").peer_addr("203.0.113.9:50000".parse().unwrap()).to_request();
//!
//! let ok = test::call_service(&app, request()).await;
//! assert_eq!(ok.status(), StatusCode::OK);
//! assert_eq!(ok.headers().get("x-ratelimit-remaining").unwrap(), "1");
//! test::call_service(&app, request()).await;
//!
//! let refused = test::call_service(&app, request()).await;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers().get("retry-after").unwrap(), "30");
//! assert_eq!(refused.headers().get("x-ratelimit-remaining").unwrap(), "0");
//! let body = test::read_body(refused).await;
//! assert_eq!(&body[..], br#"{"error":"rate_limited","policy":"api","limit":"per_ip","retry_after":30}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod body;
pub(crate) mod fields;
mod service;
mod transform;

pub use body::ResponseBody;
pub use service::{LimitedResponse, RateLimitMiddleware, ResponseFuture};
pub use tollgate::engine::{Limits, WebSocketLimits};
pub use transform::{RateLimit, RefusalHook};
