//! The durable cursor name of a (subscriber, pattern) pair.

use smalltalk_types::{StorageKey, SubscriberId, TopicPattern};

/// The durable cursor name of a (subscriber, pattern) pair:
/// `c2.<length of the subscriber id>.<subscriber>:<pattern>`, with the
/// pattern's separators written `.` and its wildcards `:s` (`*`) and `:g`
/// (`>`), which no topic segment holds. The length makes the name
/// unambiguous whatever the subscriber id ends with. A name that would be
/// longer than a storage key may be becomes `c2x.<FNV-1a 64 of the name>.`
/// followed by as much of the name as fits.
pub(crate) fn cursor_key(subscriber: &SubscriberId, pattern: &TopicPattern) -> StorageKey {
    let prefix = format!("c2.{}.{}", subscriber.as_str().len(), subscriber.as_str());
    let full = encoded_name(&prefix, pattern);
    if full.len() <= StorageKey::MAX_LEN {
        return StorageKey::parse(&full).expect("a subscriber id and a pattern make a valid key");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in full.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut short = format!("c2x.{hash:016x}.");
    let room = StorageKey::MAX_LEN - short.len();
    // The name is ASCII: any byte boundary is a char boundary.
    short.push_str(&full[..room]);
    StorageKey::parse(&short).expect("a hashed cursor name is a valid key")
}

/// The name release 0.1.0 gave the pair (`subscriber:pattern`), to carry
/// its cursor over; `None` where that name was ambiguous (a subscriber id
/// ending in `:` could collide with a wildcard pattern of another).
pub(crate) fn legacy_cursor_key(
    subscriber: &SubscriberId,
    pattern: &TopicPattern,
) -> Option<StorageKey> {
    if subscriber.as_str().ends_with(':') {
        return None;
    }
    StorageKey::parse(&encoded_name(subscriber.as_str(), pattern)).ok()
}

fn encoded_name(prefix: &str, pattern: &TopicPattern) -> String {
    let mut key = String::with_capacity(prefix.len() + pattern.as_str().len() + 8);
    key.push_str(prefix);
    key.push(':');
    for (index, element) in pattern.as_str().split([':', '.']).enumerate() {
        if index > 0 {
            key.push('.');
        }
        match element {
            "*" => key.push_str(":s"),
            ">" => key.push_str(":g"),
            segment => key.push_str(segment),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_keys_are_distinct_per_pattern_and_valid() {
        let subscriber = SubscriberId::parse("agent-1").unwrap();
        let key = |pattern: &str| {
            cursor_key(&subscriber, &TopicPattern::parse(pattern).unwrap()).to_string()
        };
        assert_eq!(key("task:*"), "c2.7.agent-1:task.:s");
        assert_eq!(key("task.>"), "c2.7.agent-1:task.:g");
        assert_eq!(key("*"), "c2.7.agent-1::s");
        // Separators are interchangeable in patterns, so in keys too.
        assert_eq!(key("a:b"), key("a.b"));
        assert_ne!(key("a.*"), key("a.s"));
        let long = format!("{}.>", "x".repeat(250));
        let long_subscriber = SubscriberId::parse(&"s".repeat(128)).unwrap();
        cursor_key(&long_subscriber, &TopicPattern::parse(&long).unwrap());
        // The longest of both, all wildcards: hashed to fit, still distinct.
        let stars = TopicPattern::parse(&["*"; 128].join(".")).unwrap();
        let mut fewer = ["*"; 127].join(".");
        fewer.push_str(".>");
        let fewer = TopicPattern::parse(&fewer).unwrap();
        let (a, b) = (
            cursor_key(&long_subscriber, &stars),
            cursor_key(&long_subscriber, &fewer),
        );
        assert!(a.as_str().len() <= StorageKey::MAX_LEN);
        assert!(a.as_str().starts_with("c2x."));
        assert_ne!(a, b);
    }

    /// A subscriber id ending in `:` and a wildcard pattern no longer
    /// share a cursor with another pair (`a:` + `s` against `a` + `*`).
    #[test]
    fn cursor_keys_never_collide() {
        let pair = |subscriber: &str, pattern: &str| {
            cursor_key(
                &SubscriberId::parse(subscriber).unwrap(),
                &TopicPattern::parse(pattern).unwrap(),
            )
        };
        assert_ne!(pair("a:", "s"), pair("a", "*"));
        assert_ne!(pair("a:", "s.x"), pair("a", "*.x"));
        assert_ne!(pair("a:", "g"), pair("a", ">"));
        // The old names collided: such a pair carries no old cursor over.
        let legacy = |subscriber: &str, pattern: &str| {
            legacy_cursor_key(
                &SubscriberId::parse(subscriber).unwrap(),
                &TopicPattern::parse(pattern).unwrap(),
            )
        };
        assert_eq!(legacy("a:", "s"), None);
        assert_eq!(
            legacy("a", "*").unwrap().as_str(),
            "a::s",
            "release 0.1.0's name"
        );
    }
}
