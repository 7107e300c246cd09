//! Group conversations: several agents sharing one conversation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::format::{Versioned, default_format_version};
use crate::time::duration_ms;
use crate::{AgentId, ConversationId, Message, SessionId, Timestamp};

/// How the next speaker is chosen (FR-018).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SpeakerSelectionStrategy {
    /// Participants in turn.
    RoundRobin,
    /// The highest-priority eligible participant.
    Priority,
    /// Ask a chat-completions model; fall back deterministically.
    #[serde(rename_all = "camelCase")]
    LlmBased {
        /// The model name sent to the endpoint.
        model: String,
        /// How long one selection may take.
        #[serde(rename = "timeoutMs", with = "duration_ms")]
        timeout: Duration,
        /// Attempts when the model names an invalid speaker.
        max_attempts: u32,
    },
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// The agent.
    pub agent_id: AgentId,
    /// Higher speaks first under [`SpeakerSelectionStrategy::Priority`].
    #[serde(default)]
    pub priority: i32,
    /// A short description used by the LLM selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The workflow a group is working through.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowState {
    /// Tasks not yet done, in order.
    #[serde(default)]
    pub task_queue: Vec<String>,
    /// Tasks done.
    #[serde(default)]
    pub completed_tasks: Vec<String>,
    /// Whether the workflow has finished.
    #[serde(default)]
    pub completed: bool,
}

/// What the participants share (FR-017).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationContext {
    /// The shared history.
    #[serde(default)]
    pub history: Vec<Message>,
    /// Shared key-value context, merge-updated.
    #[serde(default)]
    pub shared_context: Map<String, Value>,
    /// What the group is discussing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_topic: Option<String>,
    /// Workflow progress.
    #[serde(default)]
    pub workflow: WorkflowState,
}

/// A conversation among 2 to 10 agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupConversation {
    /// Unique id.
    pub id: ConversationId,
    /// The session the group persists into, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// Members.
    pub participants: Vec<Participant>,
    /// Shared state.
    #[serde(default)]
    pub context: ConversationContext,
    /// Speaker selection.
    pub strategy: SpeakerSelectionStrategy,
    /// At most this many speakers per turn.
    pub max_speakers_per_turn: u32,
    /// No agent speaks more than this many times in a row.
    pub max_consecutive_turns: u32,
    /// Allowed next speakers per speaker; empty means any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allowed_transitions: BTreeMap<AgentId, Vec<AgentId>>,
    /// The last agent that spoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_speaker: Option<AgentId>,
    /// Turns taken.
    #[serde(default)]
    pub turn: u64,
    /// Optimistic-concurrency version.
    #[serde(default)]
    pub version: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Stored-format version (see [`crate::format`]).
    #[serde(default = "default_format_version")]
    pub format_version: u32,
}

impl Versioned for GroupConversation {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_are_tagged_kebab_case() {
        let llm = SpeakerSelectionStrategy::LlmBased {
            model: "gpt".into(),
            timeout: Duration::from_millis(800),
            max_attempts: 3,
        };
        let json = serde_json::to_value(&llm).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "llm-based", "model": "gpt", "timeoutMs": 800, "maxAttempts": 3})
        );
        assert_eq!(
            serde_json::from_value::<SpeakerSelectionStrategy>(json).unwrap(),
            llm
        );
        assert_eq!(
            serde_json::to_value(SpeakerSelectionStrategy::RoundRobin).unwrap(),
            serde_json::json!({"type": "round-robin"})
        );
    }
}
