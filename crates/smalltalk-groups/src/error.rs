//! The group manager's errors.

use smalltalk_types::{AgentId, ConversationId};

use crate::AgentError;

/// Why a group operation failed. Each says whether anything was stored:
/// unless noted, nothing was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A group has 2 to 10 participants.
    #[error("a group has {min} to {max} participants, not {count}")]
    ParticipantCount {
        /// How many there would be.
        count: usize,
        /// The fewest allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
    /// The agent is in the group already.
    #[error("agent {agent_id} is in the group already")]
    DuplicateParticipant {
        /// The agent.
        agent_id: AgentId,
    },
    /// No agent with this id is registered with the manager.
    #[error("no agent {agent_id} is registered with the group manager")]
    UnknownAgent {
        /// The agent.
        agent_id: AgentId,
    },
    /// A participant's [`LlmProfile`](crate::LlmProfile) names an endpoint
    /// this manager does not have.
    #[error("agent {agent_id} names LLM endpoint {endpoint:?}, which is not configured")]
    UnknownEndpoint {
        /// The agent.
        agent_id: AgentId,
        /// The endpoint's name.
        endpoint: String,
    },
    /// The agent is not in the group.
    #[error("agent {agent_id} is not in group {group_id}")]
    NotParticipant {
        /// The group.
        group_id: ConversationId,
        /// The agent.
        agent_id: AgentId,
    },
    /// The group's spec is invalid.
    #[error("invalid group: {reason}")]
    InvalidGroup {
        /// What is wrong.
        reason: String,
    },
    /// An argument is invalid (an empty or oversized message, a bad
    /// patch, a topic too long ...).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
    /// No such group.
    #[error("group {group_id} not found")]
    NotFound {
        /// The group.
        group_id: ConversationId,
    },
    /// A group with this id exists.
    #[error("group {group_id} exists already")]
    AlreadyExists {
        /// The group.
        group_id: ConversationId,
    },
    /// This manager holds its maximum of active groups.
    #[error("at capacity: {limit} active groups")]
    AtCapacity {
        /// The limit ([`GroupsConfig::max_active_groups`](crate::GroupsConfig)).
        limit: usize,
    },
    /// A round is running (on this node), or one was left unfinished (by
    /// a process that stopped): [`GroupManager::resume`](crate::GroupManager::resume) it.
    #[error("group {group_id} has a round in progress")]
    RoundInProgress {
        /// The group.
        group_id: ConversationId,
    },
    /// [`resume`](crate::GroupManager::resume) found no round to finish.
    #[error("group {group_id} has no round in progress")]
    NoRoundInProgress {
        /// The group.
        group_id: ConversationId,
    },
    /// The group's termination condition held at the start of a round (its
    /// round or token budget is spent), or the group was ended.
    #[error("group {group_id} has finished: {reason}")]
    Finished {
        /// The group.
        group_id: ConversationId,
        /// Why.
        reason: String,
    },
    /// Another writer (another runtime, sharing the database) committed to
    /// this group since it was read: this turn was not stored. Open the
    /// group again to see what the other committed.
    #[error("group {group_id} was changed by another writer; this turn was not stored")]
    Conflict {
        /// The group.
        group_id: ConversationId,
    },
    /// The group's session was invalidated or has expired.
    #[error("group {group_id}'s session is no longer open")]
    SessionClosed {
        /// The group.
        group_id: ConversationId,
    },
    /// An agent failed and the group's policy fails the turn. The round
    /// was ended and its record stored.
    #[error("agent {agent_id} failed after {attempts} attempts")]
    AgentFailed {
        /// The agent.
        agent_id: AgentId,
        /// How many times it was asked.
        attempts: u32,
        /// Its last error.
        #[source]
        source: AgentError,
    },
    /// Every eligible agent failed in one turn. The round was ended and
    /// its record stored.
    #[error("every eligible agent failed: {}", summary(.failures))]
    AllAgentsFailed {
        /// Each agent with its last error.
        failures: Vec<(AgentId, String)>,
    },
    /// A workflow change was refused (an unknown task, a task whose
    /// dependencies are not completed ...).
    #[error("workflow: {reason}")]
    Workflow {
        /// What is wrong.
        reason: String,
    },
    /// The group's stored record could not be read.
    #[error("group {group_id}'s stored record could not be read: {reason}")]
    Undecodable {
        /// The group.
        group_id: ConversationId,
        /// Why.
        reason: String,
    },
    /// The manager was closed.
    #[error("the group manager is closed")]
    Closed,
    /// Validation in the domain layer (an id, a configuration value).
    #[error(transparent)]
    Domain(#[from] smalltalk_types::Error),
    /// The storage backend failed; see the source for whether it is
    /// transient.
    #[error("storage")]
    Storage(#[source] smalltalk_storage::Error),
}

fn summary(failures: &[(AgentId, String)]) -> String {
    failures
        .iter()
        .map(|(agent, error)| format!("{agent}: {error}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `Result` with the group [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
