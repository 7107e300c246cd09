//! Events and replay policies.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::{Versioned, default_format_version};
use crate::time::duration_ms;
use crate::{ConversationId, EventId, Payload, SessionId, Timestamp, Topic};

/// How urgent an event is; replay policies can select critical events only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum EventPriority {
    /// Ordinary.
    #[default]
    Normal,
    /// Must not be missed.
    Critical,
}

impl EventPriority {
    /// The stable name used in storage and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventPriority::Normal => "normal",
            EventPriority::Critical => "critical",
        }
    }
}

/// One event in the totally ordered log (FR-011).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique id.
    pub id: EventId,
    /// The topic it was published on, for example `task:completed`.
    pub topic: Topic,
    /// Application-level type.
    pub event_type: String,
    /// Who published it.
    pub publisher: String,
    /// When it was published.
    pub timestamp: Timestamp,
    /// Urgency.
    #[serde(default)]
    pub priority: EventPriority,
    /// The session it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The group conversation it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The body, as JSON text parsed only on access (see [`Payload`]).
    #[serde(default)]
    pub payload: Payload,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Position in the log, once appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Stored-format version (see [`crate::format`]).
    #[serde(default = "default_format_version")]
    pub format_version: u32,
}

/// The metadata key that marks an event brought in by `smalltalk import`
/// from another system's log (its value says where from). Such events are
/// history: explicit replays deliver them, live deliveries and the replay
/// on subscribe pass over them. Publishing refuses it.
pub const IMPORTED_FROM: &str = "importedFrom";

impl Event {
    /// Whether it was imported from another system's log (see
    /// [`IMPORTED_FROM`]): history for explicit replay, never a new
    /// delivery.
    pub fn is_imported(&self) -> bool {
        self.metadata.contains_key(IMPORTED_FROM)
    }

    /// Checks the payload and the metadata each nest at most
    /// [`MAX_JSON_DEPTH`](crate::format::MAX_JSON_DEPTH) levels.
    pub fn validate_depth(&self) -> crate::Result<()> {
        self.payload.check_depth("event payload")?;
        crate::format::check_map_depth("event metadata", &self.metadata)
    }
}

impl Versioned for Event {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// Which missed events a subscriber receives when it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayMode {
    /// Nothing.
    None,
    /// Everything missed.
    Full,
    /// Only critical events (the default).
    #[default]
    CriticalOnly,
}

/// A subscriber's replay policy (FR-016a-c).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventReplayPolicy {
    /// Which events.
    #[serde(default)]
    pub mode: ReplayMode,
    /// At most this many (the newest ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Only events younger than this.
    #[serde(
        default,
        rename = "timeWindowMs",
        with = "duration_ms::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_window: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_critical_only() {
        let policy = EventReplayPolicy::default();
        assert_eq!(policy.mode, ReplayMode::CriticalOnly);
        let json = serde_json::json!({"mode": "critical-only", "timeWindowMs": 1000});
        let parsed: EventReplayPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.time_window, Some(Duration::from_secs(1)));
    }

    #[test]
    fn events_round_trip() {
        let event = Event {
            id: EventId::new(),
            topic: Topic::parse("task:completed").unwrap(),
            event_type: "task".into(),
            publisher: "agent-1".into(),
            timestamp: Timestamp::now(),
            priority: EventPriority::Critical,
            session_id: Some(SessionId::new()),
            conversation_id: None,
            payload: serde_json::json!({"ok": true}).into(),
            metadata: Map::new(),
            position: Some(7),
            format_version: crate::FORMAT_VERSION,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"priority\":\"critical\""));
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }
}
