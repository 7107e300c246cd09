//! The session error type.

use std::time::Duration;

use smalltalk_types::{AgentId, SessionId, SessionState};

/// Errors from a [`SessionManager`](crate::SessionManager). Each names what
/// the caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such session (never created, deleted, or cleaned up).
    #[error("session {id} not found")]
    NotFound {
        /// The session.
        id: SessionId,
    },
    /// The session was invalidated: it accepts nothing more (HTTP 410).
    #[error("session {id} was invalidated")]
    Invalidated {
        /// The session.
        id: SessionId,
    },
    /// The session has expired: it accepts nothing more.
    #[error("session {id} has expired")]
    Expired {
        /// The session.
        id: SessionId,
    },
    /// The active pool is full (HTTP 503 with `Retry-After`).
    #[error("at capacity ({limit} active sessions); retry after {retry_after:?}")]
    CapacityExceeded {
        /// The configured limit.
        limit: usize,
        /// An estimate of when a slot frees up.
        retry_after: Duration,
    },
    /// The system is degraded (FR-010a: too many agents failed): new
    /// sessions are paused until it recovers (HTTP 503 with `Retry-After`).
    #[error("new sessions are paused while the system is degraded; retry after {retry_after:?}")]
    Paused {
        /// When to try again.
        retry_after: Duration,
    },
    /// An update kept conflicting with concurrent writers.
    #[error("session {id} kept changing under the update ({attempts} attempts)")]
    Conflict {
        /// The session.
        id: SessionId,
        /// Attempts made.
        attempts: u32,
    },
    /// A state change that is not allowed (leaving `invalidated`, or using
    /// `update_state` to invalidate instead of `invalidate`).
    #[error("session {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The session.
        id: SessionId,
        /// Its state.
        from: SessionState,
        /// The state asked for.
        to: SessionState,
    },
    /// An agent's state is over the limit even after trimming and
    /// compression. Nothing was stored.
    #[error("state of agent {agent_id} is {bytes} bytes compressed, over the {limit}-byte limit")]
    AgentStateTooLarge {
        /// The agent.
        agent_id: AgentId,
        /// Its compressed size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Earlier writes to this session, acknowledged in `async` durability,
    /// have not reached storage yet: the last background flush failed. They
    /// are kept and retried; this call was not performed. Reported once.
    #[error("writes to session {id} are not yet stored")]
    FlushFailed {
        /// The session.
        id: SessionId,
        /// The storage error of the last attempt.
        #[source]
        source: std::sync::Arc<smalltalk_storage::Error>,
    },
    /// `async` durability: the messages acknowledged but not yet stored
    /// would pass `max_pending_bytes` (storage is failing or slow). This
    /// call was refused; nothing acknowledged before was dropped. Retry
    /// once flushes catch up (HTTP 503).
    #[error("{pending_bytes} bytes of messages wait for storage, at the {limit}-byte limit")]
    Backpressure {
        /// Bytes buffered now.
        pending_bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// An update closure changed the session's id; nothing was written.
    #[error("an update of session {id} changed its id")]
    IdChanged {
        /// The session.
        id: SessionId,
    },
    /// What a content purger (the state store) keeps of the session could
    /// not be deleted, so the invalidation or deletion was not done. Retry.
    #[error("the content of session {id} kept elsewhere could not be purged")]
    PurgeFailed {
        /// The session.
        id: SessionId,
        /// The purger's error.
        #[source]
        source: smalltalk_types::BoxError,
    },
    /// Invalid input or configuration.
    #[error(transparent)]
    Domain(#[from] smalltalk_types::Error),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(smalltalk_storage::Error),
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::CapacityExceeded { .. }
            | Error::Conflict { .. }
            | Error::FlushFailed { .. }
            | Error::PurgeFailed { .. }
            | Error::Backpressure { .. } => true,
            Error::Storage(error) => error.is_transient(),
            _ => false,
        }
    }
}

impl From<smalltalk_storage::Error> for Error {
    fn from(error: smalltalk_storage::Error) -> Self {
        use smalltalk_storage::Error as Storage;
        match error {
            Storage::NotFound { id } => Error::NotFound { id },
            Storage::NotAccepting {
                id,
                state: SessionState::Invalidated,
            } => Error::Invalidated { id },
            Storage::NotAccepting { id, .. } => Error::Expired { id },
            Storage::Domain(domain) => Error::Domain(domain),
            other => Error::Storage(other),
        }
    }
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
