//! Conflict policies (FR-024): what a write conditioned on the version it
//! read does when it finds a newer one. Set per key prefix; the longest
//! matching prefix wins.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use smalltalk_storage::versioned::KeyPrefix;
use smalltalk_types::StorageKey;

use crate::StateEntry;

/// What a resolver decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Write this value.
    Use(Value),
    /// Leave the field out (for a field resolver; a whole-value resolver
    /// treats it as [`Reject`](Self::Reject)).
    Remove,
    /// Refuse the write.
    Reject,
}

/// A field changed on both sides, handed to a merge's resolver.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FieldConflict<'a> {
    /// The key.
    pub key: &'a StorageKey,
    /// The field, as a JSON pointer (`""`: the whole value).
    pub path: &'a str,
    /// Its value in the version the writer read (`None`: absent).
    pub base: Option<&'a Value>,
    /// Its value now in storage.
    pub theirs: Option<&'a Value>,
    /// Its value in the write.
    pub ours: Option<&'a Value>,
}

/// A whole conflict, handed to a custom resolver.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Conflict<'a> {
    /// The key.
    pub key: &'a StorageKey,
    /// The version the writer read (`None`: it read the key absent, or the
    /// version is no longer kept).
    pub base: Option<&'a Value>,
    /// The version in storage now (`None`: the key was deleted).
    pub theirs: Option<&'a StateEntry>,
    /// The write.
    pub ours: &'a Value,
}

/// Settles one field changed on both sides of a merge.
pub type FieldResolver = Arc<dyn Fn(&FieldConflict<'_>) -> Resolution + Send + Sync>;

/// Settles a whole conflict.
pub type Resolver = Arc<dyn Fn(&Conflict<'_>) -> Resolution + Send + Sync>;

/// What a conflicting write does.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Refuse it with [`Error::Conflict`](crate::Error::Conflict), carrying
    /// the version found (the default).
    #[default]
    Reject,
    /// Write anyway; the overwrite is logged at WARN and counted.
    LastWriteWins,
    /// Three-way JSON merge: base is the version the writer read, theirs
    /// the version now stored, ours the write. Changes to different fields
    /// combine (objects are merged field by field, recursively); a field
    /// changed on both sides to different values goes to the resolver, or
    /// the write is refused with
    /// [`Error::MergeConflict`](crate::Error::MergeConflict) without one.
    Merge(Option<FieldResolver>),
    /// A function decides.
    Custom(Resolver),
}

impl ConflictPolicy {
    /// A merge with no resolver: conflicting fields refuse the write.
    pub fn merge() -> Self {
        ConflictPolicy::Merge(None)
    }

    /// A merge whose conflicting fields go to `resolver`.
    pub fn merge_with(
        resolver: impl Fn(&FieldConflict<'_>) -> Resolution + Send + Sync + 'static,
    ) -> Self {
        ConflictPolicy::Merge(Some(Arc::new(resolver)))
    }

    /// A custom resolver.
    pub fn custom(resolver: impl Fn(&Conflict<'_>) -> Resolution + Send + Sync + 'static) -> Self {
        ConflictPolicy::Custom(Arc::new(resolver))
    }

    /// `reject`, `last_write_wins`, `merge` or `custom`: the `policy` label
    /// of `smalltalk_state_conflicts_total`.
    pub fn name(&self) -> &'static str {
        match self {
            ConflictPolicy::Reject => "reject",
            ConflictPolicy::LastWriteWins => "last_write_wins",
            ConflictPolicy::Merge(_) => "merge",
            ConflictPolicy::Custom(_) => "custom",
        }
    }
}

impl fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Policies by key prefix; the longest matching prefix wins, and keys no
/// prefix matches get the default.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    default: ConflictPolicy,
    by_prefix: BTreeMap<KeyPrefix, ConflictPolicy>,
}

impl Policies {
    /// Every key rejects conflicts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy of keys no prefix matches.
    pub fn with_default(mut self, policy: ConflictPolicy) -> Self {
        self.default = policy;
        self
    }

    /// The policy of keys under `prefix` (replacing any set for the same
    /// prefix).
    pub fn with(mut self, prefix: KeyPrefix, policy: ConflictPolicy) -> Self {
        self.by_prefix.insert(prefix, policy);
        self
    }

    /// The policy for `key`.
    pub fn for_key(&self, key: &StorageKey) -> &ConflictPolicy {
        self.by_prefix
            .iter()
            .filter(|(prefix, _)| prefix.matches(key.as_str()))
            .max_by_key(|(prefix, _)| prefix.as_str().len())
            .map_or(&self.default, |(_, policy)| policy)
    }
}

/// The outcome of a three-way merge.
pub(crate) enum Merged {
    /// The value to write (`None`: absent).
    Value(Option<Value>),
    /// Fields no resolver settled, as JSON pointers.
    Conflicts(Vec<String>),
}

/// Merges `ours` and `theirs`, both changed from `base`.
pub(crate) fn three_way(
    key: &StorageKey,
    base: Option<&Value>,
    theirs: Option<&Value>,
    ours: Option<&Value>,
    resolver: Option<&FieldResolver>,
) -> Merged {
    let mut conflicts = Vec::new();
    let value = merge_at(key, "", base, theirs, ours, resolver, &mut conflicts);
    if conflicts.is_empty() {
        Merged::Value(value)
    } else {
        Merged::Conflicts(conflicts)
    }
}

fn merge_at(
    key: &StorageKey,
    path: &str,
    base: Option<&Value>,
    theirs: Option<&Value>,
    ours: Option<&Value>,
    resolver: Option<&FieldResolver>,
    conflicts: &mut Vec<String>,
) -> Option<Value> {
    if ours == theirs || ours == base {
        return theirs.cloned();
    }
    if theirs == base {
        return ours.cloned();
    }
    let empty = Map::new();
    let base_object = match base {
        Some(Value::Object(map)) => Some(map),
        None => Some(&empty),
        Some(_) => None,
    };
    if let (Some(Value::Object(theirs_map)), Some(Value::Object(ours_map)), Some(base_map)) =
        (theirs, ours, base_object)
    {
        let mut merged = Map::new();
        let fields: std::collections::BTreeSet<&String> = base_map
            .keys()
            .chain(theirs_map.keys())
            .chain(ours_map.keys())
            .collect();
        for field in fields {
            let child = format!("{path}/{}", escape(field));
            if let Some(value) = merge_at(
                key,
                &child,
                base_map.get(field),
                theirs_map.get(field),
                ours_map.get(field),
                resolver,
                conflicts,
            ) {
                merged.insert(field.clone(), value);
            }
        }
        return Some(Value::Object(merged));
    }
    // Changed on both sides, not two objects: the resolver decides.
    let decision = resolver.map(|resolver| {
        resolver(&FieldConflict {
            key,
            path,
            base,
            theirs,
            ours,
        })
    });
    match decision {
        Some(Resolution::Use(value)) => Some(value),
        Some(Resolution::Remove) => None,
        Some(Resolution::Reject) | None => {
            conflicts.push(path.to_owned());
            None
        }
    }
}

/// A JSON pointer segment (RFC 6901).
fn escape(field: &str) -> String {
    field.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> StorageKey {
        StorageKey::parse("k").unwrap()
    }

    fn merged(base: Value, theirs: Value, ours: Value) -> Result<Value, Vec<String>> {
        match three_way(&key(), Some(&base), Some(&theirs), Some(&ours), None) {
            Merged::Value(value) => Ok(value.unwrap_or(Value::Null)),
            Merged::Conflicts(paths) => Err(paths),
        }
    }

    #[test]
    fn changes_to_different_fields_combine() {
        let base = json!({"a": 1, "b": 1, "nested": {"x": 1, "y": 1}, "gone": true});
        let theirs = json!({"a": 2, "b": 1, "nested": {"x": 2, "y": 1}, "gone": true});
        let ours = json!({"a": 1, "b": 3, "nested": {"x": 1, "y": 3}, "new": "n"});
        assert_eq!(
            merged(base, theirs, ours).unwrap(),
            json!({"a": 2, "b": 3, "nested": {"x": 2, "y": 3}, "new": "n"})
        );
    }

    #[test]
    fn a_field_changed_on_both_sides_conflicts_by_its_pointer() {
        let base = json!({"a": 1, "odd/key": 1});
        let theirs = json!({"a": 2, "odd/key": 2});
        let ours = json!({"a": 3, "odd/key": 3});
        assert_eq!(
            merged(base, theirs, ours).unwrap_err(),
            vec!["/a".to_owned(), "/odd~1key".to_owned()]
        );
        // The same change on both sides is no conflict.
        assert_eq!(
            merged(json!({"a": 1}), json!({"a": 2}), json!({"a": 2})).unwrap(),
            json!({"a": 2})
        );
    }

    #[test]
    fn the_resolver_settles_conflicting_fields() {
        let resolver: FieldResolver = Arc::new(|conflict: &FieldConflict<'_>| {
            let sum = conflict.theirs.and_then(Value::as_i64).unwrap_or(0)
                + conflict.ours.and_then(Value::as_i64).unwrap_or(0)
                - conflict.base.and_then(Value::as_i64).unwrap_or(0);
            Resolution::Use(json!(sum))
        });
        let out = three_way(
            &key(),
            Some(&json!({"count": 10})),
            Some(&json!({"count": 12})),
            Some(&json!({"count": 15})),
            Some(&resolver),
        );
        assert!(matches!(out, Merged::Value(Some(value)) if value == json!({"count": 17})));
    }

    #[test]
    fn longest_prefix_wins() {
        let policies = Policies::new()
            .with(
                KeyPrefix::parse("agent:").unwrap(),
                ConflictPolicy::LastWriteWins,
            )
            .with(
                KeyPrefix::parse("agent:7:planner:").unwrap(),
                ConflictPolicy::merge(),
            );
        let name = |text: &str| policies.for_key(&StorageKey::parse(text).unwrap()).name();
        assert_eq!(name("agent:7:planner:memory"), "merge");
        assert_eq!(name("agent:6:critic:memory"), "last_write_wins");
        assert_eq!(name("session:x"), "reject");
    }
}
