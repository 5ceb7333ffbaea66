//! The live dashboard: one self-contained page (HTML, CSS and JavaScript, no CDN, nothing to
//! build) that subscribes to the [server-sent events](super::Sample::sse_event) served beside it
//! at `stats/events` (relative to the page: `/dashboard` reads `/stats/events`) and draws, each
//! second, allowed against refused requests per second, each policy's limits, the most refused
//! keys, the leases held and the store's state. It follows the system's light or dark mode.
//!
//! A `token` query parameter on the page's URL is passed on to the event stream (see
//! [`StatsAccess`](super::StatsAccess)).
//!
//! ```
//! assert!(tollgate::stats::dashboard::HTML.contains("EventSource"));
//! assert!(!tollgate::stats::dashboard::HTML.contains("https://"), "nothing from elsewhere");
//! ```

/// The page.
pub const HTML: &str = include_str!("dashboard.html");

/// Its `Content-Type`.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The `Content-Type` of the event stream.
pub const EVENTS_CONTENT_TYPE: &str = "text/event-stream";

/// The `Content-Type` of `GET /stats`.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// How often the event stream sends a sample.
pub const EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
