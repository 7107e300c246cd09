//! What a monitored agent implements.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use smalltalk_types::{AgentId, AgentPhase, AgentState};

/// What an agent reports with a heartbeat: its phase and a counter that
/// grows as it makes progress (tokens streamed, steps done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// What it is doing.
    pub phase: AgentPhase,
    /// Grows with progress; compared between heartbeats.
    pub progress: u64,
}

impl Heartbeat {
    /// Idle, with a progress counter.
    pub fn idle(progress: u64) -> Self {
        Self {
            phase: AgentPhase::Idle,
            progress,
        }
    }
}

/// Why an agent did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// It shut down normally (a `transient` agent is then not restarted).
    #[error("the agent stopped")]
    Stopped,
    /// It failed; the text is for operators (no message bodies).
    #[error("{0}")]
    Failed(String),
}

/// An agent the monitor watches. Calls are made with timeouts; a slow
/// answer counts as no answer.
#[async_trait]
pub trait MonitoredAgent: Send + Sync + fmt::Debug + 'static {
    /// Answers a heartbeat with its phase and progress.
    async fn heartbeat(&self) -> Result<Heartbeat, AgentError>;

    /// Does a small real piece of work (a liveness probe): an agent that
    /// answers heartbeats but not this is a zombie.
    async fn probe(&self) -> Result<(), AgentError>;

    /// Restarts with `state` (its last saved state, if any) and is ready to
    /// work when this returns.
    async fn restart(&self, state: Option<AgentState>) -> Result<(), AgentError>;
}

/// Builds the backup agent for the `replace` strategy: it takes over the
/// conversation with the failed agent's saved state.
#[async_trait]
pub trait AgentFactory: Send + Sync + fmt::Debug + 'static {
    /// A new agent for `agent_id`, started with `state` and ready to work.
    async fn build(
        &self,
        agent_id: &AgentId,
        state: Option<AgentState>,
    ) -> Result<Arc<dyn MonitoredAgent>, AgentError>;
}
