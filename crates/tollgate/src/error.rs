//! The core's error type.

use crate::store::StoreError;

/// Everything that can go wrong in the core: bad configuration (with the field and value named)
/// and failures of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quota's text could not be read.
    #[error("invalid quota `{text}`: {reason}; expected {expected}")]
    ParseQuota {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A cost of zero, or above what the limit can ever admit at once (its burst or amount).
    #[error("a cost of {cost} can never pass a limit of capacity {capacity} (costs must be 1..={capacity})")]
    InvalidCost {
        /// The cost asked for.
        cost: u32,
        /// The most the limit can ever admit at once.
        capacity: u64,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: `{field}` = {value}: {reason}")]
    Config {
        /// The field's path, e.g. `policies.per_ip.limits[0].quota`.
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration file could not be read or parsed.
    #[error("cannot read configuration {path}: {source}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configuration file could not be watched for hot reload.
    #[error("cannot watch configuration {path}: {source}")]
    Watch {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Config { field: field.into(), value: value.to_string(), reason: reason.into() }
    }
}
