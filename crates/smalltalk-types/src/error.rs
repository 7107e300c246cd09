//! The error type shared by the domain layer.

/// What kind of identifier failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A [`SessionId`](crate::SessionId).
    Session,
    /// A [`ConversationId`](crate::ConversationId).
    Conversation,
    /// An [`EventId`](crate::EventId).
    Event,
    /// A [`MessageId`](crate::MessageId).
    Message,
    /// An [`AgentId`](crate::AgentId).
    Agent,
    /// A [`StorageKey`](crate::StorageKey).
    StorageKey,
    /// A [`SubscriberId`](crate::SubscriberId).
    Subscriber,
    /// A [`Topic`](crate::Topic).
    Topic,
    /// A [`TopicPattern`](crate::TopicPattern).
    TopicPattern,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Session => "session id",
            IdKind::Conversation => "conversation id",
            IdKind::Event => "event id",
            IdKind::Message => "message id",
            IdKind::Agent => "agent id",
            IdKind::StorageKey => "storage key",
            IdKind::Subscriber => "subscriber id",
            IdKind::Topic => "topic",
            IdKind::TopicPattern => "topic pattern",
        })
    }
}

/// Why an identifier was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidIdReason {
    /// The string is empty.
    Empty,
    /// The string is longer than the kind's limit (in bytes).
    TooLong {
        /// The limit in bytes.
        max: usize,
    },
    /// A character outside the documented safe charset (includes `/`, `\`,
    /// NUL and every control character, quotes and SQL metacharacters).
    ForbiddenChar,
    /// The first character is not an ASCII letter or digit (rejects `.`,
    /// `..` and hidden-file forms).
    BadStart,
    /// Contains `..`.
    DotDot,
    /// Not a UUID of version 4.
    NotUuidV4,
    /// Two separators in a row, or one at either end (topics).
    EmptySegment,
    /// A wildcard inside a segment, or `>` before the end (patterns).
    MisplacedWildcard,
}

impl std::fmt::Display for InvalidIdReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidIdReason::Empty => f.write_str("it is empty"),
            InvalidIdReason::TooLong { max } => write!(f, "it is longer than {max} bytes"),
            InvalidIdReason::ForbiddenChar => {
                f.write_str("it contains a character outside [A-Za-z0-9_.:-]")
            }
            InvalidIdReason::BadStart => f.write_str("it does not start with a letter or digit"),
            InvalidIdReason::DotDot => f.write_str("it contains `..`"),
            InvalidIdReason::NotUuidV4 => f.write_str("it is not a UUID v4"),
            InvalidIdReason::EmptySegment => f.write_str("it has an empty segment"),
            InvalidIdReason::MisplacedWildcard => {
                f.write_str("a wildcard is not a whole segment, or `>` is not last")
            }
        }
    }
}

/// Errors raised by the domain layer: validation and stored-format checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A JSON value nests deeper than
    /// [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels. Refused at
    /// write, so that whatever a write accepts, a read returns. Nothing was
    /// stored.
    #[error("{field} nests JSON deeper than the {limit}-level limit")]
    TooDeep {
        /// Which value: `metadata`, `payload`, `agent state` ...
        field: &'static str,
        /// The limit.
        limit: usize,
    },
    /// An identifier or key failed validation. Nothing was stored or read.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// What was being parsed.
        kind: IdKind,
        /// Why it was rejected.
        reason: InvalidIdReason,
    },
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A persisted record was written by a newer release than this one.
    #[error(
        "stored record has format version {found}, this release reads up to {supported}; upgrade"
    )]
    UnsupportedFormatVersion {
        /// The version found in the record.
        found: u32,
        /// The newest version this release understands.
        supported: u32,
    },
    /// A persisted record could not be encoded or decoded.
    #[error("record encoding failed")]
    Encoding(#[source] serde_json::Error),
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<std::convert::Infallible> for Error {
    /// A conversion that cannot fail (a typed id passed where text is
    /// accepted, see [`TryIntoId`](crate::TryIntoId)).
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
