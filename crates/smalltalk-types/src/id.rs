//! Validated identifiers.
//!
//! Two families:
//!
//! - **UUID ids** ([`SessionId`], [`ConversationId`], [`EventId`],
//!   [`MessageId`]): version 4 UUIDs generated from the operating system's
//!   cryptographically secure RNG. Parsing accepts only the hyphenated or
//!   simple text form of a *version 4* UUID.
//! - **Name ids** ([`AgentId`], [`StorageKey`]): chosen by the application and
//!   validated against one safe charset, so that no id can escape its storage
//!   location, whatever the backend does with it:
//!   - 1 to [`AgentId::MAX_LEN`] (128) bytes for agent ids, 1 to
//!     [`StorageKey::MAX_LEN`] (512) bytes for storage keys;
//!   - only ASCII letters, digits, `_`, `-`, `.` and `:`;
//!   - the first character is a letter or a digit;
//!   - no `..` anywhere.
//!
//! This rejects path traversal (`../../etc/passwd`: `/` and `..`), NUL and
//! every control character, whitespace, quotes and SQL metacharacters
//! (`'`, `"`, `;`, `(`, `%`, `*` ...), and over-long or empty strings, each
//! with [`Error::InvalidId`]. Ids are checked when parsed and when
//! deserialized, so an invalid id cannot be constructed at all.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{Error, IdKind, InvalidIdReason, Result};

/// The text conversions every id, topic and pattern type has: `FromStr`,
/// `TryFrom` of `&str`, `&String` and `String` (all through `parse`), and
/// `From<&Self>` (a copy), so each is a [`TryIntoId`] of itself.
macro_rules! text_conversions {
    ($name:ident) => {
        impl From<&$name> for $name {
            /// A copy: lets `&id` stand wherever an id is taken
            /// ([`TryIntoId`](crate::TryIntoId)).
            fn from(id: &$name) -> Self {
                id.clone()
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::Error;
            fn from_str(text: &str) -> crate::Result<Self> {
                Self::parse(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = crate::Error;
            fn try_from(text: &str) -> crate::Result<Self> {
                Self::parse(text)
            }
        }

        impl TryFrom<&String> for $name {
            type Error = crate::Error;
            fn try_from(text: &String) -> crate::Result<Self> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = crate::Error;
            fn try_from(text: String) -> crate::Result<Self> {
                Self::parse(&text)
            }
        }
    };
}
pub(crate) use text_conversions;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $kind:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id (UUID v4 from a CSPRNG seeded by the OS).
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parses the text form of a UUID v4.
            pub fn parse(text: &str) -> Result<Self> {
                let invalid = |reason| Error::InvalidId { kind: $kind, reason };
                if text.is_empty() {
                    return Err(invalid(InvalidIdReason::Empty));
                }
                // 36 is the hyphenated form; anything longer is rejected
                // before the parser sees it.
                if text.len() > 36 {
                    return Err(invalid(InvalidIdReason::TooLong { max: 36 }));
                }
                let uuid = Uuid::try_parse(text).map_err(|_| invalid(InvalidIdReason::NotUuidV4))?;
                Self::from_uuid(uuid)
            }

            /// Wraps a UUID, which must be version 4.
            pub fn from_uuid(uuid: Uuid) -> Result<Self> {
                if uuid.get_version_num() != 4 {
                    return Err(Error::InvalidId { kind: $kind, reason: InvalidIdReason::NotUuidV4 });
                }
                Ok(Self(uuid))
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        crate::id::text_conversions!($name);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// Identifies a [`Session`](crate::Session): a UUID v4 from a CSPRNG seeded by the OS.
    SessionId,
    IdKind::Session
);
uuid_id!(
    /// Identifies a group conversation (an event's conversation scope).
    ConversationId,
    IdKind::Conversation
);
uuid_id!(
    /// Identifies an [`Event`](crate::Event).
    EventId,
    IdKind::Event
);
uuid_id!(
    /// Identifies a [`Message`](crate::Message).
    MessageId,
    IdKind::Message
);

/// Checks `text` against the safe charset described in the module docs.
fn validate_name(text: &str, kind: IdKind, max: usize) -> Result<()> {
    let invalid = |reason| Error::InvalidId { kind, reason };
    let Some(first) = text.bytes().next() else {
        return Err(invalid(InvalidIdReason::Empty));
    };
    if text.len() > max {
        return Err(invalid(InvalidIdReason::TooLong { max }));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(invalid(InvalidIdReason::ForbiddenChar));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(invalid(InvalidIdReason::BadStart));
    }
    if text.contains("..") {
        return Err(invalid(InvalidIdReason::DotDot));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$meta:meta])* $name:ident, $kind:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// The longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `text` (see the [module docs](self)).
            pub fn parse(text: &str) -> Result<Self> {
                validate_name(text, $kind, Self::MAX_LEN)?;
                Ok(Self(text.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        crate::id::text_conversions!($name);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// Names an agent. Chosen by the application; validated (see the
    /// [module docs](self)).
    AgentId,
    IdKind::Agent,
    128
);
name_id!(
    /// Names an event-bus subscriber (a durable consumer). Validated (see
    /// the [module docs](self)).
    SubscriberId,
    IdKind::Subscriber,
    128
);
name_id!(
    /// A key in a key-value or versioned store. Validated (see the
    /// [module docs](self)).
    StorageKey,
    IdKind::StorageKey,
    512
);

/// An id, topic or pattern, or text to parse as one: what the public
/// operations take where an identifier is expected. `&str`, `&String` and
/// `String` are parsed (a bad one is the usual typed error); a value of the
/// type itself passes as is, with no parsing.
///
/// ```
/// use smalltalk_types::{AgentId, TryIntoId};
///
/// fn watch(agent: impl TryIntoId<AgentId>) -> smalltalk_types::Result<AgentId> {
///     agent.try_into_id()
/// }
/// assert_eq!(watch("planner")?, watch(AgentId::parse("planner")?)?);
/// assert!(watch("../etc").is_err());
/// # Ok::<(), smalltalk_types::Error>(())
/// ```
pub trait TryIntoId<T> {
    /// The typed value, or the parse error.
    fn try_into_id(self) -> Result<T>;
}

impl<T, S> TryIntoId<T> for S
where
    T: TryFrom<S>,
    <T as TryFrom<S>>::Error: Into<Error>,
{
    fn try_into_id(self) -> Result<T> {
        T::try_from(self).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings every id kind must reject.
    pub(crate) const HOSTILE: &[&str] = &[
        "",
        "../../etc/passwd",
        "..",
        ".hidden",
        "a/b",
        "a\\b",
        "nul\0byte",
        "tab\there",
        "new\nline",
        "quote'd",
        "double\"quote",
        "x'; DROP TABLE sessions; --",
        "100%",
        "semi;colon",
        "space here",
        "ünïcödé",
        "a..b",
    ];

    #[test]
    fn hostile_names_are_rejected_with_invalid_id() {
        for text in HOSTILE {
            for result in [
                AgentId::parse(text).map(|_| ()),
                StorageKey::parse(text).map(|_| ()),
                SessionId::parse(text).map(|_| ()),
            ] {
                assert!(
                    matches!(result, Err(Error::InvalidId { .. })),
                    "{text:?} was accepted"
                );
            }
        }
        let long = "a".repeat(10 * 1024);
        assert!(matches!(
            AgentId::parse(&long),
            Err(Error::InvalidId {
                reason: InvalidIdReason::TooLong { max: 128 },
                ..
            })
        ));
        assert!(matches!(
            StorageKey::parse(&long),
            Err(Error::InvalidId {
                reason: InvalidIdReason::TooLong { max: 512 },
                ..
            })
        ));
    }

    #[test]
    fn good_names_round_trip() {
        for text in ["agent-1", "Researcher", "ns:key.v2", "a", "9_lives"] {
            let id = AgentId::parse(text).unwrap();
            assert_eq!(id.as_str(), text);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<AgentId>(&json).unwrap(), id);
        }
        assert!(AgentId::parse(&"a".repeat(128)).is_ok());
        assert!(AgentId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn uuid_ids_require_version_4() {
        let id = SessionId::new();
        assert_eq!(id.as_uuid().get_version_num(), 4);
        assert_eq!(SessionId::parse(&id.to_string()).unwrap(), id);
        // A valid UUID of another version is refused.
        let v1ish = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        assert!(matches!(
            SessionId::parse(v1ish),
            Err(Error::InvalidId {
                reason: InvalidIdReason::NotUuidV4,
                ..
            })
        ));
        assert_ne!(SessionId::new(), SessionId::new());
    }

    #[test]
    fn deserializing_a_bad_id_fails() {
        assert!(serde_json::from_str::<AgentId>("\"../x\"").is_err());
        assert!(serde_json::from_str::<SessionId>("\"not-a-uuid\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn accepted_names_are_always_safe(text in "\\PC{0,40}") {
            if let Ok(id) = StorageKey::parse(&text) {
                proptest::prop_assert!(!id.as_str().contains('/'));
                proptest::prop_assert!(!id.as_str().contains(".."));
                proptest::prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
