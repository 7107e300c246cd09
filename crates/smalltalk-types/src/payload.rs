//! [`Payload`]: an event's body, kept as the JSON text it was written as.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Error, Result};

/// An event's body: valid JSON text, kept as written and parsed only when
/// asked ([`decode`](Payload::decode), [`to_value`](Payload::to_value)).
///
/// Reading the log, replaying and fanning out copy the bytes and never
/// build a JSON tree; a handler decodes what it needs, into its own type.
/// Two payloads are equal when their JSON text is (`{"a":1}` and
/// `{"a": 1}` are not); a payload read back from storage has the text it
/// was published with. (`payload == value` against a
/// [`Value`] compares parsed values instead, for tests.)
///
/// Serde: it serializes and deserializes as the JSON value it holds, with
/// `serde_json` only (it rides on `serde_json`'s raw values); inside
/// `#[serde(flatten)]` or untagged enums, or with another format, hold a
/// [`Value`] and convert.
///
/// ```
/// use serde_json::json;
/// use smalltalk_types::Payload;
///
/// let payload = Payload::from(json!({"task": 7}));
/// assert_eq!(payload.get(), r#"{"task":7}"#);
///
/// #[derive(serde::Deserialize)]
/// struct Task { task: u32 }
/// assert_eq!(payload.decode::<Task>()?.task, 7);
///
/// // Text is checked once, when the payload is made.
/// assert!(Payload::from_json("{not json").is_err());
/// # Ok::<(), smalltalk_types::Error>(())
/// ```
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`.
    pub fn null() -> Self {
        Self::from_json_unchecked_static("null")
    }

    /// A payload from JSON text. Errors: [`Error::Encoding`] if `json` is
    /// not one valid JSON value.
    pub fn from_json(json: impl Into<String>) -> Result<Self> {
        RawValue::from_string(json.into())
            .map(Self)
            .map_err(Error::Encoding)
    }

    /// A payload from anything serializable. Errors: [`Error::Encoding`] if
    /// `value` does not serialize to JSON (a map with non-string keys, for
    /// example).
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(Error::Encoding)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }

    /// Whether the text is empty: never, a payload is one JSON value (see
    /// [`is_null`](Payload::is_null)). Here for the `len`/`is_empty` pair.
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// Parses it into `T`. Errors: [`Error::Encoding`] if it does not fit
    /// `T`, or nests deeper than the JSON parser reads (128 levels).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.0.get()).map_err(Error::Encoding)
    }

    /// Parses it into a [`Value`]. Errors as [`decode`](Payload::decode).
    pub fn to_value(&self) -> Result<Value> {
        self.decode()
    }

    /// Checks it nests at most
    /// [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels
    /// ([`Error::TooDeep`] naming `field` if not), by one pass over the
    /// text.
    pub fn check_depth(&self, field: &'static str) -> Result<()> {
        crate::format::check_text_depth(field, self.0.get())
    }

    /// The borrowed raw value, to embed in a record being serialized.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    fn from_json_unchecked_static(json: &'static str) -> Self {
        // Only called with literals that are valid JSON.
        Self(RawValue::from_string(json.to_owned()).unwrap_or_else(|_| unreachable!()))
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        // A `Value` always serializes: its keys are strings.
        Self::serialize(value).unwrap_or_else(|_| Self::null())
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl From<&RawValue> for Payload {
    fn from(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Payload {}

impl PartialEq<Value> for Payload {
    /// Parses this payload and compares values (for tests and assertions).
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|value| &value == other)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_kept_as_written() {
        let payload = Payload::from_json(r#"{ "b": 1,  "a": [true] }"#).unwrap();
        assert_eq!(payload.get(), r#"{ "b": 1,  "a": [true] }"#);
        assert_eq!(payload, json!({"a": [true], "b": 1}));
        let embedded = serde_json::to_string(&json!({"x": 1})).unwrap();
        assert_eq!(embedded, r#"{"x":1}"#);
        #[derive(Serialize, Deserialize)]
        struct Record {
            payload: Payload,
        }
        let text = serde_json::to_string(&Record { payload }).unwrap();
        assert_eq!(text, r#"{"payload":{ "b": 1,  "a": [true] }}"#);
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.payload.get(), r#"{ "b": 1,  "a": [true] }"#);
    }

    #[test]
    fn a_record_holding_a_payload_reads_from_a_value_too() {
        #[derive(Deserialize)]
        struct Record {
            payload: Payload,
        }
        let value = json!({"payload": {"a": [1, 2]}});
        let record: Record = serde_json::from_value(value).unwrap();
        assert_eq!(record.payload.get(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn bad_text_is_refused_and_null_is_the_default() {
        assert!(matches!(Payload::from_json("{"), Err(Error::Encoding(_))));
        assert!(matches!(Payload::from_json("1 2"), Err(Error::Encoding(_))));
        assert!(Payload::default().is_null());
        assert_eq!(Payload::default().len(), 4);
        assert!(!Payload::default().is_empty());
    }

    #[test]
    fn a_deep_payload_is_kept_but_refused_by_the_depth_check() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let payload = Payload::from_json(deep).unwrap();
        assert!(matches!(
            payload.check_depth("event payload"),
            Err(Error::TooDeep { .. })
        ));
        assert!(payload.to_value().is_err(), "deeper than the parser reads");
        let brackets_in_strings = format!(r#"{{"a":"{}"}}"#, "[{".repeat(100));
        Payload::from_json(brackets_in_strings)
            .unwrap()
            .check_depth("p")
            .unwrap();
        let escaped_quote = format!(r#"["\"{}"]"#, "[".repeat(100));
        Payload::from_json(escaped_quote)
            .unwrap()
            .check_depth("p")
            .unwrap();
        let edge = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        Payload::from_json(edge).unwrap().check_depth("p").unwrap();
    }
}
