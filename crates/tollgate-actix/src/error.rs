//! The crate's error type.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use tollgate::HeaderOptions;
use tollgate::engine::Refusal;

use crate::rate_limit::fields;

/// What can go wrong in the adapter (configuration errors are the core's
/// [`tollgate::Error`]). As a `ResponseError`, each answers with the core's JSON body.
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

    /// The core's answer, rendered as by every adapter: for [`Error::NoWebSocketLimits`],
    /// [`Refusal::websocket_limits_missing`] (`{"error":"websocket_limits_missing"}`) in the
    /// default body style: the request carries no lease, and so nothing of the middleware's
    /// configured style.
    fn error_response(&self) -> HttpResponse {
        let refusal = match self {
            Error::NoWebSocketLimits => Refusal::websocket_limits_missing(&HeaderOptions::default()),
        };
        fields::response(&refusal)
    }
}
