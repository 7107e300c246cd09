//! The health-monitor error type.

use smalltalk_types::AgentId;

/// Errors from an [`AgentHealthMonitor`](crate::AgentHealthMonitor).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or recovery strategy out of range (names the
    /// field), or an invalid id.
    #[error(transparent)]
    Invalid(#[from] smalltalk_types::Error),
    /// No agent with this id is registered.
    #[error("agent {agent_id} is not registered")]
    UnknownAgent {
        /// The id asked for.
        agent_id: AgentId,
    },
    /// An agent with this id is already registered.
    #[error("agent {agent_id} is already registered")]
    AlreadyRegistered {
        /// The id.
        agent_id: AgentId,
    },
    /// `replace` was chosen without a factory to build the backup.
    #[error("agent {agent_id} uses the replace strategy but no factory was given")]
    MissingFactory {
        /// The agent.
        agent_id: AgentId,
    },
    /// Saving or loading an agent's state failed.
    #[error("agent state storage failed")]
    Storage(#[from] smalltalk_storage::Error),
    /// The session an agent serves refused to keep or give its state (over
    /// its limits, gone, invalidated, or its storage failing).
    #[error("agent {agent_id}'s state in its session could not be kept or read")]
    AgentState {
        /// The agent.
        agent_id: AgentId,
        /// What the session manager answered.
        #[source]
        source: smalltalk_types::BoxError,
    },
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
