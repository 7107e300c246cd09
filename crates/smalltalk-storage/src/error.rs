//! The storage error type.

use smalltalk_types::SessionId;

/// Errors from a storage backend. Every backend reports the same situation
/// with the same variant; the contract suite checks it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session does not exist.
    #[error("session {id} not found")]
    NotFound {
        /// The session looked for.
        id: SessionId,
    },
    /// A save with [`Expected::Absent`](crate::Expected::Absent) found the
    /// session already stored.
    #[error("session {id} already exists")]
    AlreadyExists {
        /// The session.
        id: SessionId,
    },
    /// A compare-and-swap found another version than the one expected.
    /// Nothing was written.
    #[error("session {id} is at version {found}, not {expected}")]
    Conflict {
        /// The session.
        id: SessionId,
        /// The version the caller expected.
        expected: u64,
        /// The version found in storage.
        found: u64,
    },
    /// A compare-and-swap save of a snapshot carrying new messages found
    /// the header at the expected version, but the stored history no
    /// longer ends where the snapshot's did: others appended meanwhile, and
    /// the snapshot's new messages would take their positions. Nothing was
    /// written. Appends do not change the header's version, so this is how
    /// a save learns of them.
    #[error("session {id} (version {version}) has messages the snapshot does not")]
    HistoryDiverged {
        /// The session.
        id: SessionId,
        /// The header version, which did match.
        version: u64,
    },
    /// The session no longer accepts messages: it was invalidated or has
    /// expired. Final: retrying will not help.
    #[error("session {id} does not accept messages: it is {state}")]
    NotAccepting {
        /// The session.
        id: SessionId,
        /// Why: `invalidated`, or `expired` (by state or by time).
        state: smalltalk_types::SessionState,
    },
    /// A stored session or one of its messages does not decode (a record
    /// damaged outside this library, or written by a release with other
    /// limits). Names what is damaged; nothing else of the session is
    /// returned by this read.
    #[error("session {id}: stored {} does not decode", sequence.map_or_else(|| "header".to_owned(), |sequence| format!("message {sequence}")))]
    Undecodable {
        /// The session.
        id: SessionId,
        /// The damaged message's position in the history (from 0), or
        /// `None` for the session's header.
        sequence: Option<u64>,
        /// Why it does not decode.
        #[source]
        source: Box<smalltalk_types::Error>,
    },
    /// A logged event does not decode (see
    /// [`EventLog::read_log`](crate::EventLog::read_log) to read past it).
    #[error("the logged event at position {position} does not decode")]
    UndecodableEvent {
        /// Its position.
        position: u64,
        /// Why it does not decode.
        #[source]
        source: smalltalk_types::BoxError,
    },
    /// A conditional event append found the log at another position.
    /// Nothing was written.
    #[error("the event log is at position {found}, not {expected}")]
    PositionConflict {
        /// The newest position the caller expected.
        expected: u64,
        /// The newest position found.
        found: u64,
    },
    /// A versioned-store request outside the limits (see
    /// [`InvalidRequest`](crate::versioned::InvalidRequest)). Nothing was
    /// changed.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: crate::versioned::InvalidRequest,
    },
    /// A revision after the store's newest was asked for.
    #[error("revision {requested} is in the future (the store is at {revision})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's newest revision.
        revision: u64,
    },
    /// What was asked for is below the compaction point and was removed.
    #[error("revisions before {compact_revision} were compacted")]
    Compacted {
        /// The compaction point: revisions from here on are complete.
        compact_revision: u64,
    },
    /// A lease that was never granted, was revoked, or expired.
    #[error("lease {lease} not found")]
    LeaseNotFound {
        /// The lease.
        lease: crate::versioned::LeaseId,
    },
    /// Invalid input (an id, a key, a record that does not decode) or a
    /// record stored by a newer release.
    #[error(transparent)]
    Domain(#[from] smalltalk_types::Error),
    /// The storage URL or an option in it is not valid.
    #[error("invalid storage URL: {reason}")]
    InvalidUrl {
        /// What is wrong (the URL itself is not repeated: it may hold a password).
        reason: String,
    },
    /// The URL names a backend this build does not include.
    #[error("storage backend `{scheme}` is not compiled in; enable the crate feature `{feature}`")]
    BackendNotEnabled {
        /// The URL scheme.
        scheme: String,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The backend cannot be reached right now (connection refused or reset,
    /// pool exhausted, database locked past the busy timeout). Retrying later
    /// may succeed.
    #[error("{backend} storage is unavailable")]
    Unavailable {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// Any other backend failure.
    #[error("{backend} storage failed")]
    Backend {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// A file operation failed.
    #[error("storage file operation failed on {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database was migrated by a newer release that releases as old
    /// as this one may not use.
    #[error(
        "database schema version {found} needs a release that knows schema version {readable_from} or newer; this one knows {supported}: upgrade"
    )]
    SchemaTooNew {
        /// The schema version found.
        found: u64,
        /// The newest this release knows.
        supported: u64,
        /// The oldest schema version a release must know to use it.
        readable_from: u64,
    },
    /// An [`ImportEntry`](crate::ImportEntry) with a field out of bounds.
    /// Nothing was recorded.
    #[error("invalid import entry: {reason}")]
    InvalidImport {
        /// What is wrong.
        reason: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// A boxed driver error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same call later may succeed (the backend was
    /// unavailable), as opposed to a definite answer such as a conflict.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
