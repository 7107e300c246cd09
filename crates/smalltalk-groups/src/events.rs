//! What a round reports: its events as they happen ([`GroupEvent`]) and
//! its outcome ([`RoundOutcome`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use smalltalk_types::{AgentId, ConversationId, Message, MessageId};
use tokio::sync::broadcast;

use crate::Selection;

/// Why a round ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RoundEnd {
    /// The group's termination condition held; `held` names the parts that
    /// did.
    Condition {
        /// The conditions that held, for example `max 3 turns`.
        held: Vec<String>,
    },
    /// The round reached [`Throttle::max_turns_per_round`](crate::Throttle).
    TurnLimit {
        /// The limit.
        limit: u32,
    },
    /// No participant could speak.
    NoEligibleSpeaker,
    /// [`GroupManager::stop`](crate::GroupManager::stop) was called.
    Stopped,
    /// The turn failed (see the error the round returned).
    Failed {
        /// What failed.
        reason: String,
    },
}

impl std::fmt::Display for RoundEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundEnd::Condition { held } => write!(f, "{}", held.join(", ")),
            RoundEnd::TurnLimit { limit } => write!(f, "turn limit of {limit} per round"),
            RoundEnd::NoEligibleSpeaker => f.write_str("no eligible speaker"),
            RoundEnd::Stopped => f.write_str("stopped"),
            RoundEnd::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Something that happened in a group's round, in order. Subscribe with
/// [`GroupManager::subscribe`](crate::GroupManager::subscribe).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
#[non_exhaustive]
pub enum GroupEvent {
    /// A round started with this message.
    RoundStarted {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// The message that started it (a user message or an event).
        message: Message,
    },
    /// The next speaker was chosen.
    SpeakerSelected {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// The turn within the round.
        turn: u64,
        /// Who, and why.
        selection: Selection,
    },
    /// Part of the speaker's answer, as it was written.
    Delta {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// The turn.
        turn: u64,
        /// The speaker.
        agent_id: AgentId,
        /// The text.
        text: String,
    },
    /// A turn committed its message.
    Message {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// The turn.
        turn: u64,
        /// Its position in the group's history (from 0).
        sequence: u64,
        /// The message.
        message: Message,
    },
    /// An agent failed in its turn.
    AgentFailed {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// The turn.
        turn: u64,
        /// The agent.
        agent_id: AgentId,
        /// Its error.
        error: String,
        /// Attempts so far.
        attempts: u32,
        /// Whether the group's retries are spent for it in this turn.
        gave_up: bool,
    },
    /// The round ended.
    Terminated {
        /// The group.
        group_id: ConversationId,
        /// The round.
        round: u64,
        /// Why.
        end: RoundEnd,
    },
}

impl GroupEvent {
    /// The event's name: `round-started`, `speaker-selected`, `delta`,
    /// `message`, `agent-failed` or `terminated`.
    pub fn name(&self) -> &'static str {
        match self {
            GroupEvent::RoundStarted { .. } => "round-started",
            GroupEvent::SpeakerSelected { .. } => "speaker-selected",
            GroupEvent::Delta { .. } => "delta",
            GroupEvent::Message { .. } => "message",
            GroupEvent::AgentFailed { .. } => "agent-failed",
            GroupEvent::Terminated { .. } => "terminated",
        }
    }
}

/// One turn of a finished round.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnSummary {
    /// The turn within the round (from 1).
    pub turn: u64,
    /// How its speaker was chosen.
    pub selection: Selection,
    /// The message it stored.
    pub message_id: MessageId,
    /// The message's position in the history.
    pub sequence: u64,
    /// Agents that failed in the turn before the speaker answered.
    pub failed: Vec<AgentId>,
}

/// What a round did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundOutcome {
    /// The group.
    pub group_id: ConversationId,
    /// The round.
    pub round: u64,
    /// Its turns (on resume: the turns this call ran).
    pub turns: Vec<TurnSummary>,
    /// Why it ended.
    pub end: RoundEnd,
    /// Messages in the group's history after it.
    pub message_count: u64,
}

/// A subscription to a group's events; see
/// [`GroupManager::subscribe`](crate::GroupManager::subscribe). A
/// subscriber that falls more than
/// [`GroupsConfig::event_buffer`](crate::GroupsConfig) events behind gets
/// `Err(skipped)` once and goes on from the oldest event kept. The stream
/// ends when the group is released or the manager closed.
pub struct GroupEvents {
    inner: Pin<Box<dyn Stream<Item = Result<GroupEvent, u64>> + Send>>,
}

impl std::fmt::Debug for GroupEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupEvents").finish_non_exhaustive()
    }
}

impl GroupEvents {
    pub(crate) fn new(receiver: broadcast::Receiver<GroupEvent>) -> Self {
        let inner = futures_util::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(event) => Some((Ok(event), receiver)),
                Err(broadcast::error::RecvError::Lagged(skipped)) => Some((Err(skipped), receiver)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for GroupEvents {
    /// An event, or how many were skipped because the subscriber lagged.
    type Item = Result<GroupEvent, u64>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
