//! The state store's error type.

use std::time::Duration;

use smalltalk_storage::versioned::{InvalidRequest, LeaseId};
use smalltalk_types::StorageKey;

use crate::{Expect, StateEntry};

/// Errors from a [`StateStore`](crate::StateStore). Each names what the
/// caller can act on; bad input is refused before anything is written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conditional write found another version than the one it was
    /// conditioned on, and the key's policy is to reject (the default).
    /// Nothing was written.
    #[error("{key} changed: the write expected {expected}, found {}", current.as_ref().map_or_else(|| "no value".to_owned(), |current| format!("version {} (revision {})", current.version, current.revision)))]
    Conflict {
        /// The key.
        key: StorageKey,
        /// What the write was conditioned on (the version it read).
        expected: Expect,
        /// The version found (`None`: the key is absent).
        current: Option<Box<StateEntry>>,
    },
    /// A merge found fields changed on both sides to different values, and
    /// no resolver settled them. Nothing was written.
    #[error("{key}: concurrent changes conflict at {}", paths.join(", "))]
    MergeConflict {
        /// The key.
        key: StorageKey,
        /// The conflicting fields, as JSON pointers (`""` for the whole
        /// value).
        paths: Vec<String>,
        /// The version found.
        current: Option<Box<StateEntry>>,
    },
    /// A merge needs the version the writer read, and compaction removed
    /// it. Nothing was written.
    #[error("{key}: the version the write was based on was compacted")]
    BaseCompacted {
        /// The key.
        key: StorageKey,
        /// What the write was conditioned on.
        expected: Expect,
    },
    /// A custom resolver refused the write. Nothing was written.
    #[error("{key}: the conflict resolver rejected the write")]
    Rejected {
        /// The key.
        key: StorageKey,
        /// The version found.
        current: Option<Box<StateEntry>>,
    },
    /// An update kept meeting newer versions until its timeout.
    #[error("{key} kept changing under the update ({attempts} attempts in {waited:?})")]
    Contention {
        /// The key.
        key: StorageKey,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
    },
    /// What was asked for is below the compaction point (a watch included):
    /// it is gone, and nothing answers with a shortened history instead.
    #[error("revisions before {compact_revision} were compacted")]
    Compacted {
        /// The compaction point: revisions from here on are complete.
        compact_revision: u64,
    },
    /// A revision after the newest was asked for.
    #[error("revision {requested} is in the future (the store is at {revision})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The newest revision.
        revision: u64,
    },
    /// The version asked for was erased by a purge (its session was
    /// invalidated or deleted).
    #[error("{key} at revision {revision} was purged")]
    Purged {
        /// The key.
        key: StorageKey,
        /// The purged version's revision.
        revision: u64,
    },
    /// A value over the configured limit. Nothing was written.
    #[error("the value of {key} is {size} bytes, over the {limit}-byte limit")]
    ValueTooLarge {
        /// The key.
        key: StorageKey,
        /// Its encoded size.
        size: usize,
        /// The limit ([`StateConfig::max_value_bytes`](crate::StateConfig::max_value_bytes)).
        limit: usize,
    },
    /// A request outside the limits: too many ops, a key twice in one
    /// branch, a history depth of 0, a limit out of range. Nothing was
    /// written.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: InvalidRequest,
    },
    /// A lease that was never granted, was revoked, or expired.
    #[error("lease {lease} not found")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// A stored value is not JSON (written around this crate, or damaged).
    #[error("{key} at revision {revision} does not decode as JSON")]
    Undecodable {
        /// The key.
        key: StorageKey,
        /// Its revision.
        revision: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An invalid key, prefix, id or configuration value, or a value that
    /// nests too deep.
    #[error(transparent)]
    Domain(#[from] smalltalk_types::Error),
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[source] smalltalk_storage::Error),
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying later may succeed (storage was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Storage(error) if error.is_transient())
    }
}

impl From<smalltalk_storage::Error> for Error {
    fn from(error: smalltalk_storage::Error) -> Self {
        use smalltalk_storage::Error as Storage;
        match error {
            Storage::Compacted { compact_revision } => Error::Compacted { compact_revision },
            Storage::FutureRevision {
                requested,
                revision,
            } => Error::FutureRevision {
                requested,
                revision,
            },
            Storage::LeaseNotFound { lease } => Error::LeaseNotFound { lease },
            Storage::InvalidRequest { reason } => match reason {
                InvalidRequest::ValueTooLarge { key, size } => Error::ValueTooLarge {
                    key,
                    size,
                    limit: smalltalk_storage::versioned::MAX_VALUE_BYTES,
                },
                reason => Error::InvalidRequest { reason },
            },
            Storage::Domain(error) => Error::Domain(error),
            other => Error::Storage(other),
        }
    }
}
