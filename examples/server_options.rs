//! The demo servers' guards against slow and idle clients, from the environment (one file, shared
//! by the axum, actix-web and warp demos as they share `demo-config.toml`; each demo applies them
//! with its framework's own settings). A client that never finishes its request never reaches
//! the rate limits, so these bound what such clients can hold: see the README's "Production
//! deployment".

use std::fmt;
use std::time::Duration;

/// How long a client may take over a request, and how many connections are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// The longest a client may take to send a request head, counted from the connection's
    /// start or from the end of the previous response (so it also closes connections left idle):
    /// a head trickled a byte at a time is cut off when it runs out. `TOLLGATE_HEADER_TIMEOUT`,
    /// default 10 s.
    pub header_timeout: Duration,
    /// The longest from a request's head to its response, reading the body included: a body
    /// trickled slower gets `408 Request Timeout` and the connection is closed.
    /// `TOLLGATE_REQUEST_TIMEOUT`, default 30 s.
    pub request_timeout: Duration,
    /// The most connections served at once; further ones wait in the listener's backlog.
    /// `TOLLGATE_MAX_CONNECTIONS`, default 1000.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    /// 10 s to send a head: ample for any client on a working network, short enough that a
    /// slow-loris client must open a new connection every few seconds to keep each place. 30 s
    /// from head to response: the demo's largest body (64 KiB) then needs only about 2 KiB/s.
    /// 1000 connections: under the 1024 open files a process commonly gets by default, with
    /// room for the listener and Redis, so that a flood of connections waits in the backlog
    /// instead of failing `accept` (raise `ulimit -n` and this together).
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1000,
        }
    }
}

impl ServerOptions {
    /// The defaults, changed by `TOLLGATE_HEADER_TIMEOUT` and `TOLLGATE_REQUEST_TIMEOUT`
    /// (durations: `10s`, `1500ms`, `2min`) and `TOLLGATE_MAX_CONNECTIONS` where they are set;
    /// an error names the variable and its value.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`ServerOptions::from_env`] with the variables `var` gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Self::default();
        let duration = |name: &str, default: Duration| match var(name) {
            None => Ok(default),
            Some(text) => match tollgate::quota::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("{name}={text:?}: must be more than 0")),
                Err(e) => Err(format!("{name}={text:?}: {e}")),
            },
        };
        let max_connections = match var("TOLLGATE_MAX_CONNECTIONS") {
            None => defaults.max_connections,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("TOLLGATE_MAX_CONNECTIONS={text:?}: expected a whole number above 0")),
            },
        };
        Ok(Self {
            header_timeout: duration("TOLLGATE_HEADER_TIMEOUT", defaults.header_timeout)?,
            request_timeout: duration("TOLLGATE_REQUEST_TIMEOUT", defaults.request_timeout)?,
            max_connections,
        })
    }
}

impl fmt::Display for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slow clients: request heads within {:?} (TOLLGATE_HEADER_TIMEOUT), whole requests within {:?} \
             (TOLLGATE_REQUEST_TIMEOUT), at most {} connections (TOLLGATE_MAX_CONNECTIONS)",
            self.header_timeout, self.request_timeout, self.max_connections
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_variables() {
        assert_eq!(ServerOptions::from_vars(|_| None), Ok(ServerOptions::default()));
        let set = ServerOptions::from_vars(|name| match name {
            "TOLLGATE_HEADER_TIMEOUT" => Some("1500ms".into()),
            "TOLLGATE_REQUEST_TIMEOUT" => Some("2s".into()),
            "TOLLGATE_MAX_CONNECTIONS" => Some("64".into()),
            _ => None,
        });
        let expected = ServerOptions {
            header_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(2),
            max_connections: 64,
        };
        assert_eq!(set, Ok(expected));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let bad = |name: &'static str, value: &'static str| {
            ServerOptions::from_vars(|n| (n == name).then(|| value.to_owned())).err().unwrap_or_default()
        };
        assert!(bad("TOLLGATE_HEADER_TIMEOUT", "soon").starts_with("TOLLGATE_HEADER_TIMEOUT=\"soon\""));
        assert!(bad("TOLLGATE_REQUEST_TIMEOUT", "0s").contains("more than 0"));
        assert!(bad("TOLLGATE_MAX_CONNECTIONS", "0").starts_with("TOLLGATE_MAX_CONNECTIONS=\"0\""));
    }
}
