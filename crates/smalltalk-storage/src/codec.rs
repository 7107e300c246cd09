//! How records are encoded for the SQL backends.
//!
//! A session is stored as one header row (every field but the messages, as
//! JSON, plus indexed columns) and one row per message. Columns are the
//! truth for `version`, `updated_at` and the message count: an append
//! changes them without rewriting the header.
//!
//! A message row keeps its `content` as raw UTF-8 bytes apart from the rest
//! of the message (small JSON): decoding a long history then costs a UTF-8
//! check per message instead of parsing every character of escaped JSON.
//! Bytes, not a text column, because PostgreSQL text cannot hold NUL
//! characters and messages may.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smalltalk_types::format::{decode_record, encode_record};
use smalltalk_types::{
    AgentId, AgentState, Message, MessageId, Role, Session, SessionId, SessionState,
    SessionSummary, Timestamp,
};

use crate::Result;

/// The header of a session: every field but the messages.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HeaderRef<'a> {
    id: SessionId,
    state: SessionState,
    version: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
    expires_at: Timestamp,
    agent_states: &'a BTreeMap<AgentId, AgentState>,
    metadata: &'a Map<String, Value>,
    format_version: u32,
}

/// Encodes the header of `session`, gzip-compressed when over
/// [`COMPRESS_ABOVE`]. Its `version` is informational: the column is the
/// truth, so the header can be encoded before the new version is known
/// (outside the writer's transaction).
pub(crate) fn encode_header(session: &Session) -> Result<Vec<u8>> {
    smalltalk_types::format::check_map_depth("session metadata", &session.metadata)?;
    session
        .agent_states
        .values()
        .try_for_each(AgentState::validate_depth)?;
    let json = encode_record(&HeaderRef {
        id: session.id,
        state: session.state,
        version: session.version,
        created_at: session.created_at,
        updated_at: session.updated_at,
        expires_at: session.expires_at,
        agent_states: &session.agent_states,
        metadata: &session.metadata,
        format_version: session.format_version,
    })?;
    if json.len() > COMPRESS_ABOVE {
        Ok(compress(&json))
    } else {
        Ok(json)
    }
}

/// Headers (agent states, metadata) larger than this are stored
/// gzip-compressed (FR-009a). Small ones stay plain JSON, readable with any
/// SQL tool.
pub const COMPRESS_ABOVE: usize = 100 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Gzip-compresses `bytes` (fast level: headers are rewritten often).
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Undoes [`compress`] if `bytes` is gzip; returns plain JSON as is.
fn decompress(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    use std::io::Read;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let mut plain = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut plain)
        .map_err(|error| {
            smalltalk_types::Error::Encoding(serde::de::Error::custom(format!(
                "stored header does not decompress: {error}"
            )))
        })?;
    Ok(std::borrow::Cow::Owned(plain))
}

/// A message as stored: its content, and everything else as JSON.
pub(crate) struct EncodedMessage {
    pub(crate) meta: Vec<u8>,
    pub(crate) content: Vec<u8>,
}

impl EncodedMessage {
    /// Bytes stored for this message.
    pub(crate) fn len(&self) -> u64 {
        (self.meta.len() + self.content.len()) as u64
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageMetaRef<'a> {
    id: MessageId,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a AgentId>,
    timestamp: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageMeta {
    id: MessageId,
    role: Role,
    #[serde(default)]
    agent_id: Option<AgentId>,
    timestamp: Timestamp,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// Encodes one message for storage.
pub(crate) fn encode_message(message: &Message) -> Result<EncodedMessage> {
    message.validate_depth()?;
    let meta = encode_record(&MessageMetaRef {
        id: message.id,
        role: message.role,
        agent_id: message.agent_id.as_ref(),
        timestamp: message.timestamp,
        metadata: (!message.metadata.is_empty()).then_some(&message.metadata),
    })?;
    Ok(EncodedMessage {
        meta,
        content: message.content.as_bytes().to_vec(),
    })
}

/// Messages ready to append: encoded, with their total stored size and the
/// newest timestamp among them.
pub(crate) struct EncodedAppend {
    pub(crate) messages: Vec<EncodedMessage>,
    pub(crate) bytes: u64,
    pub(crate) newest: Option<Timestamp>,
}

/// Encodes messages for an append.
pub(crate) fn encode_append(messages: &[Message]) -> Result<EncodedAppend> {
    let encoded = messages
        .iter()
        .map(encode_message)
        .collect::<Result<Vec<_>>>()?;
    Ok(EncodedAppend {
        bytes: encoded.iter().map(EncodedMessage::len).sum(),
        messages: encoded,
        newest: messages.iter().map(|message| message.timestamp).max(),
    })
}

/// The id of a stored message, from its metadata JSON.
pub(crate) fn message_id(meta: &[u8]) -> Result<MessageId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: MessageId,
    }
    let only: IdOnly = serde_json::from_slice(meta).map_err(smalltalk_types::Error::Encoding)?;
    Ok(only.id)
}

/// Decodes one stored message, taking ownership of its content bytes.
fn decode_message(meta: &[u8], content: Vec<u8>) -> Result<Message> {
    let meta: MessageMeta =
        serde_json::from_slice(meta).map_err(smalltalk_types::Error::Encoding)?;
    let content = String::from_utf8(content).map_err(|error| {
        smalltalk_types::Error::Encoding(serde::de::Error::custom(format!(
            "stored message content is not UTF-8: {error}"
        )))
    })?;
    Ok(Message {
        id: meta.id,
        role: meta.role,
        agent_id: meta.agent_id,
        content,
        timestamp: meta.timestamp,
        metadata: meta.metadata,
    })
}

/// Rebuilds a session from its header, the authoritative columns, and its
/// stored messages (metadata JSON, content bytes) in order.
pub(crate) fn decode_session(
    id: SessionId,
    header: &[u8],
    version: u64,
    updated_at: Timestamp,
    messages: impl ExactSizeIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<Session> {
    // A record from a newer release keeps its own typed error; anything
    // else that does not decode names what is damaged.
    let undecodable = |sequence: Option<u64>| {
        move |source| match source {
            smalltalk_types::Error::UnsupportedFormatVersion { .. } => crate::Error::Domain(source),
            source => crate::Error::Undecodable {
                id,
                sequence,
                source: Box::new(source),
            },
        }
    };
    let mut session: Session = decompress(header)
        .map_err(|error| match error {
            crate::Error::Domain(source) => undecodable(None)(source),
            other => other,
        })
        .and_then(|plain| decode_record(&plain).map_err(undecodable(None)))?;
    session.version = version;
    session.updated_at = updated_at;
    session.messages.reserve_exact(messages.len());
    for (sequence, (meta, content)) in messages.enumerate() {
        let message = match decode_message(&meta, content) {
            Ok(message) => message,
            Err(crate::Error::Domain(source)) => {
                return Err(undecodable(Some(sequence as u64))(source));
            }
            Err(other) => return Err(other),
        };
        session.messages.push(message);
    }
    Ok(session)
}

/// The part of a logged event kept as JSON; everything else (id, topic,
/// type, publisher, time, priority, scopes) lives in columns, so reading the
/// log decodes only this. The payload is embedded as written and read back
/// as a slice of the body: no JSON tree is built for it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBodyRef<'a> {
    payload: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Map::is_empty")]
    metadata: &'a Map<String, Value>,
    format_version: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody<'a> {
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    metadata: Map<String, Value>,
    format_version: u32,
}

/// Encodes the JSON part of a logged event.
pub(crate) fn encode_event(event: &smalltalk_types::Event) -> Result<Vec<u8>> {
    event.validate_depth()?;
    Ok(encode_record(&EventBodyRef {
        payload: event.payload.as_raw(),
        metadata: &event.metadata,
        format_version: event.format_version,
    })?)
}

/// A logged event's columns, as read, borrowed from the row.
pub(crate) struct EventColumns<'a> {
    pub(crate) position: i64,
    pub(crate) id: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) publisher: &'a str,
    pub(crate) timestamp: i64,
    pub(crate) priority: &'a str,
    pub(crate) session_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

/// Adds the row in `columns` to `entries` if it matches `filter`'s topic
/// patterns (the other filters ran in SQL), and moves `cursor` to it. The
/// topic is checked before the body is decoded. A row that does not decode
/// is added as [`LogEntry::Undecodable`](crate::LogEntry::Undecodable)
/// (also when its topic does not parse, so cannot be matched): the rows
/// after it are read all the same.
pub(crate) fn take_if_matching(
    columns: &EventColumns<'_>,
    filter: &crate::EventFilter,
    entries: &mut Vec<crate::LogEntry>,
    cursor: &mut u64,
) {
    *cursor = to_u64(columns.position);
    let entry = match smalltalk_types::Topic::parse(columns.topic) {
        Ok(topic) => {
            if !(filter.patterns.is_empty()
                || filter
                    .patterns
                    .iter()
                    .any(|pattern| pattern.matches(&topic)))
            {
                return;
            }
            decode_event(columns, topic)
        }
        Err(error) => Err(error),
    };
    entries.push(match entry {
        Ok(event) => crate::LogEntry::Event(event),
        Err(error) => undecodable_row(
            columns.position,
            columns.id.to_owned(),
            columns.topic.to_owned(),
            error,
        ),
    });
}

/// Whether `filter`'s topic patterns rule out a row whose topic column
/// reads as `topic`. A topic that does not parse is never ruled out: the
/// row cannot be matched, so it is reported.
pub(crate) fn topic_excluded(filter: &crate::EventFilter, topic: &str) -> bool {
    !filter.patterns.is_empty()
        && smalltalk_types::Topic::parse(topic).is_ok_and(|topic| {
            !filter
                .patterns
                .iter()
                .any(|pattern| pattern.matches(&topic))
        })
}

/// The entry for a logged row that does not decode.
pub(crate) fn undecodable_row(
    position: i64,
    event_id: String,
    topic: String,
    error: impl Into<smalltalk_types::BoxError>,
) -> crate::LogEntry {
    crate::LogEntry::Undecodable(crate::UndecodableEvent {
        position: to_u64(position),
        event_id,
        topic,
        error: error.into(),
    })
}

/// Rebuilds a logged event from its columns.
fn decode_event(
    columns: &EventColumns<'_>,
    topic: smalltalk_types::Topic,
) -> smalltalk_types::Result<smalltalk_types::Event> {
    let body: EventBody<'_> = match serde_json::from_slice(columns.body) {
        Ok(body) => body,
        Err(error) => {
            // A newer release may have changed the shape: say so.
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Probe {
                format_version: Option<u32>,
            }
            let newer = serde_json::from_slice::<Probe>(columns.body)
                .ok()
                .and_then(|probe| probe.format_version)
                .filter(|found| *found > smalltalk_types::FORMAT_VERSION);
            return Err(match newer {
                Some(found) => smalltalk_types::Error::UnsupportedFormatVersion {
                    found,
                    supported: smalltalk_types::FORMAT_VERSION,
                },
                None => smalltalk_types::Error::Encoding(error),
            });
        }
    };
    if body.format_version > smalltalk_types::FORMAT_VERSION {
        return Err(smalltalk_types::Error::UnsupportedFormatVersion {
            found: body.format_version,
            supported: smalltalk_types::FORMAT_VERSION,
        });
    }
    let priority = match columns.priority {
        "critical" => smalltalk_types::EventPriority::Critical,
        _ => smalltalk_types::EventPriority::Normal,
    };
    Ok(smalltalk_types::Event {
        id: smalltalk_types::EventId::parse(columns.id)?,
        topic,
        event_type: columns.event_type.to_owned(),
        publisher: columns.publisher.to_owned(),
        timestamp: Timestamp::from_micros(columns.timestamp),
        priority,
        session_id: columns.session_id.map(SessionId::parse).transpose()?,
        conversation_id: columns
            .conversation_id
            .map(smalltalk_types::ConversationId::parse)
            .transpose()?,
        payload: body
            .payload
            .map_or_else(smalltalk_types::Payload::null, Into::into),
        metadata: body.metadata,
        position: Some(to_u64(columns.position)),
        format_version: body.format_version,
    })
}

/// The newest timestamp among `messages` if later than `current`.
pub(crate) fn advanced_updated_at(current: Timestamp, messages: &[Message]) -> Timestamp {
    messages
        .iter()
        .map(|message| message.timestamp)
        .fold(current, Timestamp::max)
}

/// Builds a summary from the indexed columns.
pub(crate) fn summary(
    id: &str,
    state: &str,
    version: i64,
    created_at: i64,
    updated_at: i64,
    expires_at: i64,
    message_count: i64,
) -> Result<SessionSummary> {
    Ok(SessionSummary {
        id: SessionId::parse(id)?,
        state: parse_state(state)?,
        version: to_u64(version),
        created_at: Timestamp::from_micros(created_at),
        updated_at: Timestamp::from_micros(updated_at),
        expires_at: Timestamp::from_micros(expires_at),
        message_count: to_u64(message_count),
    })
}

/// Parses a stored state name.
pub(crate) fn parse_state(name: &str) -> Result<SessionState> {
    SessionState::from_name(name).ok_or_else(|| {
        smalltalk_types::Error::Encoding(serde::de::Error::custom(format!(
            "unknown session state `{name}` in storage"
        )))
        .into()
    })
}

/// SQL integers are signed; counts and versions never go negative.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Versions and counts as SQL integers.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
