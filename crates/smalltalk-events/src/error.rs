//! The event-bus error type.

use std::sync::Arc;

use smalltalk_types::{SubscriberId, TopicPattern};

/// Errors from an [`EventBus`](crate::EventBus). Each names what the caller
/// can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic, pattern or id that does not follow its grammar (see
    /// [`smalltalk_types::topic`]), or a configuration value out of range
    /// (`InvalidConfig`, naming the field). Nothing was published or
    /// subscribed.
    #[error(transparent)]
    Invalid(#[from] smalltalk_types::Error),
    /// The payload is larger than [`EventBusConfig::max_payload_bytes`](crate::EventBusConfig::max_payload_bytes).
    /// Nothing was published.
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    PayloadTooLarge {
        /// The payload's encoded size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// No active subscription (and, for [`EventBus::replay`](crate::EventBus::replay),
    /// none) has this subscriber id.
    #[error("unknown subscriber {subscriber}")]
    UnknownSubscriber {
        /// The id asked for.
        subscriber: SubscriberId,
    },
    /// The subscriber already has an active subscription to this pattern:
    /// each (subscriber, pattern) pair is one durable cursor and can be
    /// consumed by one subscription at a time.
    #[error("subscriber {subscriber} is already subscribed to {pattern}")]
    AlreadySubscribed {
        /// The subscriber.
        subscriber: SubscriberId,
        /// The pattern.
        pattern: TopicPattern,
    },
    /// A conditional publish found the log at another position. Nothing was
    /// published.
    #[error("the event log is at position {found}, not {expected}")]
    PositionConflict {
        /// The newest position the caller expected.
        expected: u64,
        /// The newest position found.
        found: u64,
    },
    /// The log did not answer within
    /// [`storage_timeout`](crate::EventBusConfig::storage_timeout); nothing
    /// was changed (for `subscribe`: no subscription was made).
    #[error("{operation} timed out after {after:?} waiting for the event log")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// A replay-policy file that cannot be read or does not parse.
    #[error("replay policies from {origin} cannot be read")]
    PolicyFile {
        /// The file (or `<string>`).
        origin: String,
        /// What is wrong: the I/O error, or the parser's (with the line
        /// where it knows it).
        #[source]
        source: smalltalk_types::BoxError,
    },
    /// The event log failed. For a publish, nothing was delivered; whether
    /// it was stored is unknown only if the failure is
    /// [transient](Error::is_transient) and happened at commit.
    #[error("event log failed")]
    Storage(#[source] Arc<smalltalk_storage::Error>),
    /// The metadata holds a key the bus keeps for itself (today
    /// [`IMPORTED_FROM`](smalltalk_types::event::IMPORTED_FROM), which
    /// marks imported history that is never delivered live). Nothing was
    /// published.
    #[error("metadata key `{key}` is reserved")]
    ReservedMetadata {
        /// The key.
        key: &'static str,
    },
    /// The bus was closed.
    #[error("the event bus is closed")]
    Closed,
}

impl Error {
    /// Whether retrying later may succeed (the log's backend was
    /// unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage(source) => source.is_transient(),
            Error::Timeout { .. } => true,
            _ => false,
        }
    }
}

impl From<smalltalk_storage::Error> for Error {
    fn from(error: smalltalk_storage::Error) -> Self {
        match error {
            smalltalk_storage::Error::PositionConflict { expected, found } => {
                Error::PositionConflict { expected, found }
            }
            smalltalk_storage::Error::Domain(domain) => Error::Invalid(domain),
            other => Error::Storage(Arc::new(other)),
        }
    }
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
