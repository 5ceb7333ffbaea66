//! The crate's error type.

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

/// What can go wrong in the adapter (configuration errors are the core's
/// [`tollgate::Error`]). As a `ResponseError`, each answers with a JSON body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A WebSocket handler asked for its connection's lease, but the request carries none: the
    /// route is not wrapped in [`RateLimit`](crate::RateLimit) with WebSocket limits. Answered with
    /// 500, as a server misconfiguration.
    #[error("the route has no WebSocket limits (wrap it in tollgate_actix::RateLimit with WebSocket limits)")]
    NoWebSocketLimits,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::NoWebSocketLimits => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            Error::NoWebSocketLimits => r#"{"error":"websocket_limits_missing"}"#,
        };
        HttpResponse::build(self.status_code())
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body)
    }
}
