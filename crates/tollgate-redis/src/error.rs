//! The crate's error type.

/// What can go wrong building a [`RedisStore`](crate::RedisStore). Failures of single decisions are
/// [`tollgate::StoreError`]s, which the policy's failure mode handles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached at start-up (the URL is shown without its password).
    #[error("cannot reach Redis at {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A builder option is invalid.
    #[error("invalid Redis store configuration: `{field}` = {value}: {reason}")]
    Config {
        /// The option, e.g. `prefix`.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A quota is outside what the Redis scripts compute exactly (see the crate docs, "Limits").
    #[error("quota {quota} is out of the Redis store's range: {reason}")]
    QuotaOutOfRange {
        /// The quota.
        quota: String,
        /// Which bound it exceeds.
        reason: &'static str,
    },
}

/// Hides the password of a `redis://user:password@host` URL, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{}{user}{hidden}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact("redis://:secret@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(redact("rediss://bob:s3:cr@t@h"), "rediss://bob:***@h");
        assert_eq!(redact("redis://bob@h"), "redis://bob@h");
        assert_eq!(redact("not a url"), "not a url");
    }
}
