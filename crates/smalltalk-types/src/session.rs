//! Sessions: one conversation with its history, agent states and metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::{Versioned, default_format_version};
use crate::{AgentId, MessageId, SessionId, Timestamp};

/// The lifecycle state of a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// In use.
    Active,
    /// No activity for a while; still restorable.
    Idle,
    /// Past its expiry time; awaiting cleanup.
    Expired,
    /// Explicitly terminated: rejects new messages.
    Invalidated,
}

impl SessionState {
    /// Every state, in declaration order.
    pub const ALL: [SessionState; 4] = [
        SessionState::Active,
        SessionState::Idle,
        SessionState::Expired,
        SessionState::Invalidated,
    ];

    /// The stable lowercase name used in storage and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Idle => "idle",
            SessionState::Expired => "expired",
            SessionState::Invalidated => "invalidated",
        }
    }

    /// Parses the name returned by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The human user.
    User,
    /// An agent's reply.
    Assistant,
    /// Instructions from the application.
    System,
    /// Output of a tool call.
    Tool,
}

/// One entry of a conversation's history. Messages are immutable once
/// stored: the history is only ever appended to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Unique id.
    pub id: MessageId,
    /// Who wrote it.
    pub role: Role,
    /// The agent that wrote it, for agent messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// The text.
    pub content: String,
    /// When it was written.
    pub timestamp: Timestamp,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl Message {
    /// Checks the metadata nests at most
    /// [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels (every
    /// store refuses deeper ones with [`Error::TooDeep`](crate::Error::TooDeep)).
    pub fn validate_depth(&self) -> crate::Result<()> {
        crate::format::check_map_depth("message metadata", &self.metadata)
    }

    /// A message with a fresh id and no metadata.
    pub fn new(role: Role, content: impl Into<String>, timestamp: Timestamp) -> Self {
        Self {
            id: MessageId::new(),
            role,
            agent_id: None,
            content: content.into(),
            timestamp,
            metadata: Map::new(),
        }
    }

    /// Sets the authoring agent.
    pub fn with_agent(mut self, agent_id: AgentId) -> Self {
        self.agent_id = Some(agent_id);
        self
    }
}

/// The preserved state of one agent within a session (FR-009a).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// The agent.
    pub agent_id: AgentId,
    /// The agent's configuration (model, prompt, tools ...).
    #[serde(default)]
    pub config: Value,
    /// Working context: named fields.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// Names of `context` fields that may be dropped when the state is over
    /// its size limit (after the oldest history turns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmable_fields: Vec<String>,
    /// The agent's recent turns, oldest first.
    #[serde(default)]
    pub history: Vec<Message>,
    /// When this state was last changed.
    pub updated_at: Timestamp,
    /// Stored-format version (see [`crate::format`]).
    #[serde(default = "default_format_version")]
    pub format_version: u32,
}

impl AgentState {
    /// Checks the config, the context and the turns' metadata each nest at
    /// most [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels.
    pub fn validate_depth(&self) -> crate::Result<()> {
        crate::format::check_depth("agent state config", &self.config)?;
        crate::format::check_map_depth("agent state context", &self.context)?;
        self.history.iter().try_for_each(Message::validate_depth)
    }

    /// An empty state for `agent_id`.
    pub fn new(agent_id: AgentId, now: Timestamp) -> Self {
        Self {
            agent_id,
            config: Value::Null,
            context: Map::new(),
            trimmable_fields: Vec::new(),
            history: Vec::new(),
            updated_at: now,
            format_version: crate::FORMAT_VERSION,
        }
    }
}

impl Versioned for AgentState {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// One conversation: the unit of persistence and recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Unique id (UUID v4).
    pub id: SessionId,
    /// Lifecycle state.
    pub state: SessionState,
    /// Optimistic-concurrency version, assigned by storage: 1 after the first
    /// save, incremented by every write.
    pub version: u64,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The ordered message history.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// One state record per agent.
    #[serde(default)]
    pub agent_states: BTreeMap<AgentId, AgentState>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Stored-format version (see [`crate::format`]).
    #[serde(default = "default_format_version")]
    pub format_version: u32,
}

impl Session {
    /// Checks every JSON value the session holds (metadata, agent states,
    /// messages) nests at most
    /// [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels.
    pub fn validate_depth(&self) -> crate::Result<()> {
        crate::format::check_map_depth("session metadata", &self.metadata)?;
        self.agent_states
            .values()
            .try_for_each(AgentState::validate_depth)?;
        self.messages.iter().try_for_each(Message::validate_depth)
    }

    /// A new, empty, active session that expires `ttl` after `now`.
    pub fn new(id: SessionId, now: Timestamp, ttl: Duration) -> Self {
        Self {
            id,
            state: SessionState::Active,
            version: 0,
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(ttl),
            messages: Vec::new(),
            agent_states: BTreeMap::new(),
            metadata: Map::new(),
            format_version: crate::FORMAT_VERSION,
        }
    }

    /// Whether the session has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// A hash of everything the session holds (FNV-1a over its JSON), equal
    /// for equal content in any process, to verify that a restore returned
    /// exactly what was saved (FR-003).
    pub fn content_hash(&self) -> u64 {
        // Maps serialize in key order, so the JSON is canonical.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

impl Versioned for Session {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// A session without its history and agent states, as returned by listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    /// The session's id.
    pub id: SessionId,
    /// Lifecycle state.
    pub state: SessionState,
    /// Current version.
    pub version: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Expiry time.
    pub expires_at: Timestamp,
    /// Number of messages in the history.
    pub message_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_json_is_camel_case_and_round_trips() {
        let now = Timestamp::now();
        let mut session = Session::new(SessionId::new(), now, Duration::from_secs(3600));
        let agent = AgentId::parse("writer").unwrap();
        session
            .messages
            .push(Message::new(Role::User, "héllo ✓", now).with_agent(agent.clone()));
        session
            .agent_states
            .insert(agent.clone(), AgentState::new(agent, now));
        session.metadata.insert("k".into(), Value::from(1));
        let json = serde_json::to_value(&session).unwrap();
        for key in [
            "createdAt",
            "updatedAt",
            "expiresAt",
            "agentStates",
            "formatVersion",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["state"], "active");
        assert_eq!(json["messages"][0]["agentId"], "writer");
        let back: Session = serde_json::from_value(json).unwrap();
        assert_eq!(back, session);
    }

    #[test]
    fn a_bad_agent_id_inside_a_record_fails_to_decode() {
        let now = Timestamp::now();
        let session = Session::new(SessionId::new(), now, Duration::from_secs(60));
        let mut json = serde_json::to_value(&session).unwrap();
        json["agentStates"] = serde_json::json!({"../../etc/passwd": {"agentId": "../../etc/passwd", "updatedAt": now}});
        assert!(serde_json::from_value::<Session>(json).is_err());
    }

    #[test]
    fn content_hash_follows_content() {
        let now = Timestamp::from_micros(1);
        let mut session = Session::new(SessionId::new(), now, Duration::from_secs(60));
        let hash = session.content_hash();
        assert_eq!(hash, session.clone().content_hash());
        let decoded: Session =
            serde_json::from_str(&serde_json::to_string(&session).unwrap()).unwrap();
        assert_eq!(decoded.content_hash(), hash);
        session.messages.push(Message::new(Role::User, "x", now));
        assert_ne!(session.content_hash(), hash);
    }

    #[test]
    fn state_names_round_trip() {
        for state in SessionState::ALL {
            assert_eq!(SessionState::from_name(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(SessionState::from_name("bogus"), None);
    }
}
