//! Event topics and the patterns subscribers match them with.
//!
//! # Grammar
//!
//! ```text
//! topic    = segment *( separator segment )          ; at most 255 bytes
//! pattern  = element *( separator element )          ; at most 255 bytes
//! segment  = 1*( ALPHA / DIGIT / "_" / "-" )
//! element  = segment / "*" / ">"                     ; ">" only as the last element
//! separator = ":" / "."
//! ```
//!
//! - `*` matches exactly one segment: `agent:*` matches `agent:heartbeat`,
//!   not `agent` nor `agent:a:b`.
//! - `>` matches one or more trailing segments: `task.>` matches
//!   `task.completed` and `task.step.done`, not `task`.
//! - `:` and `.` are interchangeable: a topic is its sequence of segments, so
//!   `task:completed` and `task.completed` are the same topic, and the
//!   pattern `task.*` matches both.
//! - Matching is exact and case-sensitive otherwise.
//!
//! Anything else (empty segments, spaces, other punctuation, a wildcard
//! inside a segment, `>` before the end, over 255 bytes) is refused with
//! [`Error::InvalidId`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, IdKind, InvalidIdReason, Result};

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

fn is_segment_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-')
}

/// Splits on either separator.
fn elements(text: &str) -> impl Iterator<Item = &str> {
    text.split([':', '.'])
}

fn check_length(text: &str, kind: IdKind) -> Result<()> {
    let invalid = |reason| Error::InvalidId { kind, reason };
    if text.is_empty() {
        return Err(invalid(InvalidIdReason::Empty));
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(invalid(InvalidIdReason::TooLong { max: MAX_TOPIC_LEN }));
    }
    Ok(())
}

/// A validated event topic, for example `task:completed`. `:` and `.` are
/// the same separator, so `task:completed` and `task.completed` are equal
/// (and hash and order alike); [`as_str`](Self::as_str) keeps the topic as
/// written.
#[derive(Clone)]
pub struct Topic(Box<str>);

/// A name's bytes with `:` read as `.` (the separators are one).
fn normalized(text: &str) -> impl Iterator<Item = u8> + '_ {
    text.bytes()
        .map(|byte| if byte == b':' { b'.' } else { byte })
}

macro_rules! separator_blind_eq {
    ($name:ident) => {
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.len() == other.0.len() && normalized(&self.0).eq(normalized(&other.0))
            }
        }

        impl Eq for $name {}

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                for byte in normalized(&self.0) {
                    state.write_u8(byte);
                }
                state.write_usize(self.0.len());
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                normalized(&self.0).cmp(normalized(&other.0))
            }
        }
    };
}

separator_blind_eq!(Topic);
separator_blind_eq!(TopicPattern);

impl Topic {
    /// Validates `text` against the [grammar](self).
    pub fn parse(text: &str) -> Result<Self> {
        check_length(text, IdKind::Topic)?;
        for segment in elements(text) {
            if segment.is_empty() {
                return Err(Error::InvalidId {
                    kind: IdKind::Topic,
                    reason: InvalidIdReason::EmptySegment,
                });
            }
            if !segment.bytes().all(is_segment_byte) {
                return Err(Error::InvalidId {
                    kind: IdKind::Topic,
                    reason: InvalidIdReason::ForbiddenChar,
                });
            }
        }
        Ok(Self(text.into()))
    }

    /// The topic as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its segments, separators removed.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        elements(&self.0)
    }
}

/// A validated subscription pattern, for example `agent:*` or `task.>`.
/// Equal to the same pattern written with the other separator, like
/// [`Topic`].
#[derive(Clone)]
pub struct TopicPattern(Box<str>);

impl TopicPattern {
    /// Validates `text` against the [grammar](self).
    pub fn parse(text: &str) -> Result<Self> {
        check_length(text, IdKind::TopicPattern)?;
        let invalid = |reason| Error::InvalidId {
            kind: IdKind::TopicPattern,
            reason,
        };
        let mut elements = elements(text).peekable();
        while let Some(element) = elements.next() {
            match element {
                "" => return Err(invalid(InvalidIdReason::EmptySegment)),
                "*" => {}
                ">" if elements.peek().is_none() => {}
                ">" => return Err(invalid(InvalidIdReason::MisplacedWildcard)),
                segment if segment.bytes().all(is_segment_byte) => {}
                segment if segment.contains(['*', '>']) => {
                    return Err(invalid(InvalidIdReason::MisplacedWildcard));
                }
                _ => return Err(invalid(InvalidIdReason::ForbiddenChar)),
            }
        }
        Ok(Self(text.into()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut topic_segments = topic.segments();
        for element in elements(&self.0) {
            match (element, topic_segments.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (literal, Some(segment)) if literal == segment => {}
                _ => return false,
            }
        }
        topic_segments.next().is_none()
    }

    /// Whether the pattern has no wildcard (matches one topic only).
    pub fn is_literal(&self) -> bool {
        !elements(&self.0).any(|element| element == "*" || element == ">")
    }
}

macro_rules! text_type {
    ($name:ident) => {
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

text_type!(Topic);
text_type!(TopicPattern);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_two_separators_are_one() {
        use std::collections::HashSet;
        let colon = Topic::parse("task:done").unwrap();
        let dot = Topic::parse("task.done").unwrap();
        assert_eq!(colon, dot);
        assert_eq!(colon.cmp(&dot), std::cmp::Ordering::Equal);
        assert_eq!(HashSet::from([colon.clone(), dot]).len(), 1);
        assert_eq!(colon.as_str(), "task:done", "kept as written");
        assert_ne!(colon, Topic::parse("task.don").unwrap());
        assert_eq!(
            TopicPattern::parse("agent:*").unwrap(),
            TopicPattern::parse("agent.*").unwrap()
        );
    }

    fn topic(text: &str) -> Topic {
        Topic::parse(text).unwrap()
    }

    fn pattern(text: &str) -> TopicPattern {
        TopicPattern::parse(text).unwrap()
    }

    #[test]
    fn wildcards_match_as_documented() {
        let cases = [
            ("agent:*", "agent:heartbeat", true),
            ("agent:*", "agent", false),
            ("agent:*", "agent:a:b", false),
            ("task.>", "task.completed", true),
            ("task.>", "task.step.done", true),
            ("task.>", "task", false),
            ("task.*", "task:completed", true),
            ("task:completed", "task.completed", true),
            ("*.*", "a.b", true),
            ("*", "a.b", false),
            (">", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("Task.x", "task.x", false),
        ];
        for (pattern_text, topic_text, expected) in cases {
            assert_eq!(
                pattern(pattern_text).matches(&topic(topic_text)),
                expected,
                "{pattern_text} vs {topic_text}"
            );
        }
    }

    #[test]
    fn malformed_topics_and_patterns_are_refused() {
        for bad in [
            "",
            "a::b",
            ".a",
            "a.",
            "a b",
            "a/b",
            "a*",
            "*",
            "a.>",
            "ü",
            &"a".repeat(256),
        ] {
            assert!(
                matches!(
                    Topic::parse(bad),
                    Err(Error::InvalidId {
                        kind: IdKind::Topic,
                        ..
                    })
                ),
                "topic {bad:?}"
            );
        }
        for bad in [
            "",
            "a::b",
            "a.>.b",
            "a*",
            "*b",
            "a.>x",
            "a b",
            "a/b",
            &"a".repeat(256),
        ] {
            assert!(
                matches!(
                    TopicPattern::parse(bad),
                    Err(Error::InvalidId {
                        kind: IdKind::TopicPattern,
                        ..
                    })
                ),
                "pattern {bad:?}"
            );
        }
        assert!(serde_json::from_str::<Topic>("\"a::b\"").is_err());
        assert_eq!(
            serde_json::from_str::<TopicPattern>("\"a.>\"").unwrap(),
            pattern("a.>")
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-c]{1,2}"
    }

    fn topic_segments() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(segment(), 1..6)
    }

    proptest! {
        /// A topic read as a pattern matches itself, whatever the separators.
        #[test]
        fn a_literal_pattern_matches_exactly_its_topic(segments in topic_segments(), other in topic_segments(), colons in any::<bool>()) {
            let separator = if colons { ":" } else { "." };
            let text = segments.join(separator);
            let literal = TopicPattern::parse(&text).unwrap();
            prop_assert!(literal.matches(&Topic::parse(&segments.join(".")).unwrap()));
            prop_assert_eq!(literal.matches(&Topic::parse(&other.join(":")).unwrap()), segments == other);
        }

        /// Replacing segments by `*` keeps the match; `*` never matches a
        /// different number of segments.
        #[test]
        fn star_matches_exactly_one_segment(segments in topic_segments(), mask in prop::collection::vec(any::<bool>(), 6), extra in segment()) {
            let elements: Vec<&str> = segments.iter().zip(&mask).map(|(segment, star)| if *star { "*" } else { segment.as_str() }).collect();
            let pattern = TopicPattern::parse(&elements.join(".")).unwrap();
            prop_assert!(pattern.matches(&Topic::parse(&segments.join(".")).unwrap()));
            let longer = format!("{}.{extra}", segments.join("."));
            prop_assert!(!pattern.matches(&Topic::parse(&longer).unwrap()));
        }

        /// `prefix.>` matches exactly the topics that extend the prefix by
        /// at least one segment.
        #[test]
        fn tail_matches_every_longer_topic_with_the_prefix(prefix in topic_segments(), topic in topic_segments()) {
            let pattern = TopicPattern::parse(&format!("{}.>", prefix.join("."))).unwrap();
            let expected = topic.len() > prefix.len() && topic[..prefix.len()] == prefix[..];
            prop_assert_eq!(pattern.matches(&Topic::parse(&topic.join(".")).unwrap()), expected);
        }

        /// Whatever the parser accepts is made only of the grammar's bytes.
        #[test]
        fn accepted_text_stays_within_the_grammar(text in "\\PC{0,20}") {
            if let Ok(topic) = Topic::parse(&text) {
                prop_assert!(topic.as_str().bytes().all(|b| is_segment_byte(b) || b == b':' || b == b'.'));
            }
        }
    }
}
