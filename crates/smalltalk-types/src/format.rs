//! The stored-format version carried by every persisted record.
//!
//! Each record stores `formatVersion`. A release reads every version up to
//! [`FORMAT_VERSION`]; older records are migrated on load by
//! [`decode_record`], newer ones are refused with
//! [`Error::UnsupportedFormatVersion`] instead of being misread.
//!
//! History:
//! - **1** (0.1.0): the first stored format.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The format version this release writes.
pub const FORMAT_VERSION: u32 = 1;

/// The default for records written before the field existed.
pub(crate) fn default_format_version() -> u32 {
    FORMAT_VERSION
}

/// How deep a JSON value given to any write (session or message
/// metadata, an agent's config, context or turns, an event's payload or
/// metadata) may nest: `{}` and `[]` count one level each, scalars none.
/// Deeper values are refused with [`Error::TooDeep`]; the limit keeps every
/// stored record well inside what the decoder reads back (128 levels for
/// the whole record).
pub const MAX_JSON_DEPTH: usize = 64;

/// Checks `value` nests at most [`MAX_JSON_DEPTH`] levels. Iterative: a
/// hostile value cannot overflow the stack here.
pub fn check_depth(field: &'static str, value: &serde_json::Value) -> Result<()> {
    within(field, depth_at_most(value, MAX_JSON_DEPTH))
}

/// [`check_depth`] for a JSON object given as its map (the map is one
/// level).
pub fn check_map_depth(
    field: &'static str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    within(
        field,
        map.values()
            .all(|value| depth_at_most(value, MAX_JSON_DEPTH - 1)),
    )
}

fn within(field: &'static str, ok: bool) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::TooDeep {
            field,
            limit: MAX_JSON_DEPTH,
        })
    }
}

/// [`check_depth`] for JSON text: one pass over the bytes, counting open
/// brackets outside strings. `json` must be valid JSON (as a
/// [`Payload`](crate::Payload) always is); on other text the answer means
/// nothing.
pub fn check_text_depth(field: &'static str, json: &str) -> Result<()> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return within(field, false);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `value` nests at most `limit` levels.
fn depth_at_most(value: &serde_json::Value, limit: usize) -> bool {
    use serde_json::Value;
    let mut pending: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth >= limit {
            return false;
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    true
}

/// A persisted record that carries its stored-format version.
pub trait Versioned {
    /// The version this record was written with.
    fn format_version(&self) -> u32;
}

/// Decodes a persisted JSON record, migrating older formats and refusing
/// newer ones.
pub fn decode_record<T: DeserializeOwned + Versioned>(json: &[u8]) -> Result<T> {
    match serde_json::from_slice::<T>(json) {
        Ok(record) => {
            check(record.format_version())?;
            Ok(record)
        }
        Err(decode_error) => {
            // A newer release may have changed the shape: report the version
            // rather than a confusing field error.
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Probe {
                format_version: Option<u32>,
            }
            if let Ok(Probe {
                format_version: Some(found),
            }) = serde_json::from_slice(json)
            {
                check(found)?;
            }
            Err(Error::Encoding(decode_error))
        }
    }
}

/// Encodes a record for storage.
pub fn encode_record<T: serde::Serialize>(record: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(Error::Encoding)
}

fn check(found: u32) -> Result<()> {
    if found > FORMAT_VERSION {
        return Err(Error::UnsupportedFormatVersion {
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> serde_json::Value {
        let mut value = serde_json::json!(1);
        for _ in 0..levels {
            value = serde_json::json!({ "a": value });
        }
        value
    }

    #[test]
    fn depth_is_checked_without_recursion() {
        assert!(check_depth("v", &nested(MAX_JSON_DEPTH)).is_ok());
        assert!(matches!(
            check_depth("v", &nested(MAX_JSON_DEPTH + 1)),
            Err(Error::TooDeep {
                field: "v",
                limit: MAX_JSON_DEPTH
            })
        ));
        assert!(check_depth("v", &serde_json::json!([[], {}, 3])).is_ok());
        let mut map = serde_json::Map::new();
        map.insert("k".into(), nested(MAX_JSON_DEPTH - 1));
        assert!(check_map_depth("m", &map).is_ok());
        map.insert("deep".into(), nested(MAX_JSON_DEPTH));
        assert!(check_map_depth("m", &map).is_err());
        assert!(check_depth("v", &nested(1_000)).is_err());
    }
    use crate::{Session, SessionId, Timestamp};

    #[test]
    fn newer_format_is_refused_with_a_typed_error() {
        let session = Session::new(
            SessionId::new(),
            Timestamp::now(),
            std::time::Duration::from_secs(60),
        );
        let mut value = serde_json::to_value(&session).unwrap();
        value["formatVersion"] = serde_json::json!(FORMAT_VERSION + 1);
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            decode_record::<Session>(&bytes),
            Err(Error::UnsupportedFormatVersion { found, .. }) if found == FORMAT_VERSION + 1
        ));
        // Same when the newer shape no longer parses.
        value["messages"] = serde_json::json!("changed shape");
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            decode_record::<Session>(&bytes),
            Err(Error::UnsupportedFormatVersion { .. })
        ));
    }

    #[test]
    fn missing_format_version_reads_as_current() {
        let session = Session::new(
            SessionId::new(),
            Timestamp::now(),
            std::time::Duration::from_secs(60),
        );
        let mut value = serde_json::to_value(&session).unwrap();
        value.as_object_mut().unwrap().remove("formatVersion");
        let decoded: Session = decode_record(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(decoded, session);
    }
}
