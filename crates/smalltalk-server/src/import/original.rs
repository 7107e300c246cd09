//! The records the TypeScript original writes, as it writes them
//! (FileStorageAdapter session files; the same JSON sits in its PostgreSQL
//! `sessions.data` column and its Redis `session:<id>` hash).
//!
//! Fields the original may leave out default; unknown ones are ignored
//! (a newer original adds fields, it does not stop an import).

use serde::Deserialize;
use serde_json::{Map, Value};
use smalltalk::Timestamp;

/// A session of the original.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalSession {
    /// Its id, as the original gave it (not always a UUID v4).
    pub id: String,
    /// ISO 8601.
    pub created_at: Timestamp,
    /// ISO 8601 (default: `createdAt`).
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    /// ISO 8601.
    pub expires_at: Timestamp,
    /// `active`, `paused`, `expired`, `invalidated_pending_cleanup` or
    /// `closed`.
    pub state: OriginalState,
    /// The agents in it.
    #[serde(default)]
    pub agent_ids: Vec<String>,
    /// Each agent's state, by agent id.
    #[serde(default)]
    pub agent_states: Map<String, Value>,
    /// The turns, in order.
    #[serde(default)]
    pub conversation_history: Vec<OriginalTurn>,
    /// State all agents share.
    #[serde(default)]
    pub shared_context: Map<String, Value>,
    /// Its metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Its version in the original.
    #[serde(default)]
    pub version: u64,
}

/// The original's session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginalState {
    /// In use.
    Active,
    /// Paused by the user or the system.
    Paused,
    /// Past its expiry.
    Expired,
    /// Invalidated, waiting to be deleted.
    InvalidatedPendingCleanup,
    /// Ended.
    Closed,
}

/// One turn: a user message and the agents' answers to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalTurn {
    /// Its place in the conversation.
    #[serde(default)]
    pub sequence: u64,
    /// ISO 8601.
    pub timestamp: Timestamp,
    /// What the user said.
    pub user_message: String,
    /// The answers, in order.
    #[serde(default)]
    pub agent_responses: Vec<OriginalResponse>,
}

/// An agent's answer in a turn.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalResponse {
    /// The agent.
    pub agent_id: String,
    /// What it said.
    pub response: String,
    /// ISO 8601 (default: the turn's).
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
}

/// An agent's state: `{config, context, messageHistory}`; `context` may
/// hold `_metadata` naming its trimmable fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalAgentState {
    /// Its configuration.
    #[serde(default)]
    pub config: Value,
    /// Its working context.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// Its own history: `{role, content, timestamp}` entries.
    #[serde(default)]
    pub message_history: Vec<Value>,
}

/// One line of the original's event logs (`data/events/<topic>.log`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalEvent {
    /// Its id, as the original gave it.
    pub id: String,
    /// Its topic, for example `task:completed`.
    pub topic: String,
    /// Its body.
    #[serde(default)]
    pub payload: Value,
    /// `normal`, `critical` (or `low`, `high`).
    #[serde(default)]
    pub priority: Option<String>,
    /// When it was published, in milliseconds since the epoch.
    pub timestamp: i64,
    /// The session it belongs to.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The conversation it belongs to.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Its metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}
