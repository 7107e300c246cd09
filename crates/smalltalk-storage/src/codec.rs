//! How records are encoded for the SQL backends.
//!
//! A session is stored as one header row (every field but the messages, as
//! JSON, plus indexed columns) and one row per message. Columns are the
//! truth for `version`, `updated_at` and the message count: an append
//! changes them without rewriting the header.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use smalltalk_types::format::{decode_record, encode_record};
use smalltalk_types::{
    AgentId, AgentState, Message, Session, SessionId, SessionState, SessionSummary, Timestamp,
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

/// Encodes the header of `session`. Its `version` is informational: the
/// column is the truth, so the header can be encoded before the new version
/// is known (outside the writer's transaction).
pub(crate) fn encode_header(session: &Session) -> Result<Vec<u8>> {
    Ok(encode_record(&HeaderRef {
        id: session.id,
        state: session.state,
        version: session.version,
        created_at: session.created_at,
        updated_at: session.updated_at,
        expires_at: session.expires_at,
        agent_states: &session.agent_states,
        metadata: &session.metadata,
        format_version: session.format_version,
    })?)
}

/// Encodes one message.
pub(crate) fn encode_message(message: &Message) -> Result<Vec<u8>> {
    Ok(encode_record(message)?)
}

/// Rebuilds a session from its header, the authoritative columns, and its
/// message bodies in order.
pub(crate) fn decode_session<'a>(
    header: &[u8],
    version: u64,
    updated_at: Timestamp,
    messages: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<Session> {
    let mut session: Session = decode_record(header)?;
    session.version = version;
    session.updated_at = updated_at;
    session.messages.reserve_exact(messages.len());
    for body in messages {
        session
            .messages
            .push(serde_json::from_slice(body).map_err(smalltalk_types::Error::Encoding)?);
    }
    Ok(session)
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
