//! The original's key-value entries into the store's
//! [`KeyValueStore`](smalltalk::storage::KeyValueStore): the value as its
//! JSON text, under the same key (or, when that key is not valid here,
//! `imported-<safe form>-<8 hex digits of its SHA-256>`), with what is left
//! of its time to live. Expired entries are skipped.

use serde_json::Value;
use smalltalk::storage::ImportEntry;
use smalltalk::{StorageKey, Timestamp};

use super::{Context, ImportReport, Outcome, hex_digest, ledger_id};

/// The ledger kind of imported key-value entries.
pub const KV: &str = "kv";

/// One key-value entry of the original.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginalEntry {
    /// Its key, as the original gave it.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// When it expires, if it does.
    pub expires_at: Option<Timestamp>,
}

/// Our key for the original's `key`: itself when valid here, else one
/// derived from it (the same on every run).
pub fn our_key(key: &str) -> StorageKey {
    if let Ok(ours) = StorageKey::parse(key) {
        return ours;
    }
    let safe = super::mapping::safe_name(key, 200);
    let digest = hex_digest(key);
    let derived = if safe.is_empty() {
        format!("imported-{}", &digest[..8])
    } else {
        format!("imported-{safe}-{}", &digest[..8])
    };
    StorageKey::parse(&derived)
        .or_else(|_| StorageKey::parse(&format!("imported-{digest}")))
        .expect("hex digits make a valid key")
}

/// Imports `entry` (read from `what`); a record that cannot be is
/// reported.
pub(crate) async fn import_entry(
    context: &Context<'_>,
    what: &str,
    entry: OriginalEntry,
    report: &mut ImportReport,
) {
    match import_one(context, &entry, report).await {
        Ok(Some(outcome)) => report.count(KV, outcome),
        Ok(None) => {}
        Err(reason) => report.fail(KV, what, reason),
    }
}

async fn import_one(
    context: &Context<'_>,
    entry: &OriginalEntry,
    report: &mut ImportReport,
) -> Result<Option<Outcome>, String> {
    let ttl = match entry.expires_at {
        Some(at) if at <= context.now => {
            report.skip(KV, entry.key.clone(), "expired");
            return Ok(None);
        }
        Some(at) => Some(at.duration_since(context.now)),
        None => None,
    };
    let original_id = ledger_id(&entry.key);
    if context
        .store
        .imported(KV, &original_id)
        .await
        .map_err(|error| error.to_string())?
        .is_some()
    {
        return Ok(Some(Outcome::Duplicate));
    }
    // The same original twice in one source.
    if !context.first_time(KV, &original_id) {
        return Ok(Some(Outcome::Duplicate));
    }
    let key = our_key(&entry.key);
    if key.as_str() != entry.key {
        report.rename(entry.key.clone(), key.as_str());
    }
    let value = serde_json::to_vec(&entry.value).map_err(|error| error.to_string())?;
    // The entry, then the ledger: a crash between leaves the entry, which
    // the next run finds with the same value, and records.
    let outcome = match context
        .store
        .get(&key)
        .await
        .map_err(|error| error.to_string())?
    {
        Some(stored) if stored == value => Outcome::Duplicate,
        Some(_) => {
            return Err(format!(
                "key {key} is already here with another value: left as it is"
            ));
        }
        None if context.dry_run => Outcome::Imported,
        None => {
            context
                .store
                .set(&key, &value, ttl)
                .await
                .map_err(|error| error.to_string())?;
            Outcome::Imported
        }
    };
    if context.dry_run {
        return Ok(Some(outcome));
    }
    context
        .store
        .record_import(&ImportEntry {
            kind: KV.into(),
            original_id,
            target_id: key.to_string(),
            source: context.source.clone(),
            imported_at: context.now,
        })
        .await
        .map_err(|error| error.to_string())?;
    Ok(Some(outcome))
}

/// Reads an entry file of the FileStorageAdapter (`<base>/kv/<sanitized
/// key>.json`). Its name is the key made safe for a file name, so the key
/// is taken from the JSON where it says: `{"key", "value", "ttl" |
/// "expiresAt"}` (an expiry as ISO 8601 or milliseconds since the epoch);
/// any other JSON is the value itself, under the file's name.
pub fn parse_entry_file(stem: &str, json: Value) -> Result<OriginalEntry, String> {
    const ENVELOPE: [&str; 6] = ["key", "value", "ttl", "expiresAt", "createdAt", "updatedAt"];
    if let Value::Object(fields) = &json {
        if fields.contains_key("value") && fields.keys().all(|field| ENVELOPE.contains(&&**field)) {
            let key = match fields.get("key") {
                Some(Value::String(key)) => key.clone(),
                None | Some(Value::Null) => stem.to_owned(),
                Some(_) => return Err("its `key` is not a string".into()),
            };
            let expiry = fields
                .get("expiresAt")
                .or_else(|| fields.get("ttl"))
                .unwrap_or(&Value::Null);
            return Ok(OriginalEntry {
                key,
                value: fields["value"].clone(),
                expires_at: expiry_of(expiry)?,
            });
        }
    }
    Ok(OriginalEntry {
        key: stem.to_owned(),
        value: json,
        expires_at: None,
    })
}

/// An expiry: null, ISO 8601 text, or milliseconds since the epoch.
pub fn expiry_of(value: &Value) -> Result<Option<Timestamp>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(millis) => millis
            .as_i64()
            .and_then(|millis| millis.checked_mul(1000))
            .map(|micros| Some(Timestamp::from_micros(micros)))
            .ok_or_else(|| format!("expiry {millis} is not milliseconds since the epoch")),
        Value::String(_) => serde_json::from_value::<Timestamp>(value.clone())
            .map(Some)
            .map_err(|error| format!("expiry {value} is not ISO 8601: {error}")),
        other => Err(format!("expiry {other} is neither a time nor null")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_that_are_not_ours_get_one_derived_alike_every_time() {
        assert_eq!(our_key("user:42:prefs").as_str(), "user:42:prefs");
        let derived = our_key("../etc/passwd");
        assert!(
            derived.as_str().starts_with("imported-etc-passwd-"),
            "{derived}"
        );
        assert_eq!(derived, our_key("../etc/passwd"));
        assert_ne!(our_key("a b"), our_key("a/b"), "no two share a key");
        assert!(our_key("").as_str().starts_with("imported-"));
        assert!(our_key(&"x".repeat(5000)).as_str().len() <= StorageKey::MAX_LEN);
    }

    #[test]
    fn entry_files_are_envelopes_or_bare_values() {
        let entry = parse_entry_file(
            "user_42",
            json!({"key": "user/42", "value": {"theme": "dark"}, "ttl": 1_900_000_000_000_i64}),
        )
        .unwrap();
        assert_eq!(entry.key, "user/42");
        assert_eq!(entry.value, json!({"theme": "dark"}));
        assert_eq!(
            entry.expires_at.map(Timestamp::as_millis),
            Some(1_900_000_000_000)
        );
        let bare = parse_entry_file("counter", json!({"value": 1, "unit": "x"})).unwrap();
        assert_eq!(
            (bare.key.as_str(), bare.value),
            ("counter", json!({"value": 1, "unit": "x"}))
        );
        assert!(parse_entry_file("k", json!({"value": 1, "ttl": "soon"})).is_err());
        assert!(parse_entry_file("k", json!({"value": 1, "key": 7})).is_err());
    }
}
