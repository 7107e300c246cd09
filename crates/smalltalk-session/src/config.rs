//! Configuration of a [`SessionManager`](crate::SessionManager).

use std::time::Duration;

use smalltalk_types::Error as DomainError;

use crate::Result;

/// How a [`SessionManager`](crate::SessionManager) behaves. Every field has
/// a documented default; [`validate`](Self::validate) checks the ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How long a new session lives (FR-004). Default 7 days; 1 hour to 30
    /// days.
    pub default_ttl: Duration,
    /// Most sessions in this manager's active pool (FR-035). Default 100; at
    /// least 1. Creating more fails with
    /// [`Error::CapacityExceeded`](crate::Error::CapacityExceeded).
    pub max_active_sessions: usize,
    /// How many times an update is re-applied on fresh data after a version
    /// conflict before giving up (FR-005). Default 3.
    pub conflict_retries: u32,
    /// Pause before re-applying an update after a conflict; doubles with
    /// each attempt. Default 100 ms.
    pub conflict_backoff: Duration,
    /// Limits on preserved agent state (FR-009a).
    pub agent_state: AgentStateLimits,
    /// A session in the active pool with no activity (message, update) for
    /// this long becomes `idle` at the next maintenance run and leaves the
    /// pool, freeing capacity. Default 30 minutes; `None` never idles.
    pub idle_after: Option<Duration>,
    /// How often [`spawn_maintenance`](crate::SessionManager::spawn_maintenance)
    /// runs (idle sweep and cleanup). Default 60 s; 1 s to 24 h.
    pub maintenance_interval: Duration,
}

/// Limits on one agent's preserved state (FR-009a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentStateLimits {
    /// Turns of the agent's own history kept (the newest). Default 10; at
    /// least 1.
    pub max_turns: usize,
    /// Largest encoded state, in bytes. Default 10 MB; at least 1 KB. Over
    /// it the oldest turns are dropped, then the fields marked trimmable;
    /// a state still over it even gzip-compressed is refused with
    /// [`Error::AgentStateTooLarge`](crate::Error::AgentStateTooLarge).
    pub max_bytes: usize,
}

impl Default for AgentStateLimits {
    fn default() -> Self {
        Self {
            max_turns: 10,
            max_bytes: 10 * 1024 * 1024,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(7 * 24 * 3600),
            max_active_sessions: 100,
            conflict_retries: 3,
            conflict_backoff: Duration::from_millis(100),
            agent_state: AgentStateLimits::default(),
            idle_after: Some(Duration::from_secs(30 * 60)),
            maintenance_interval: Duration::from_secs(60),
        }
    }
}

/// Shortest session lifetime accepted.
pub const MIN_TTL: Duration = Duration::from_secs(3600);
/// Longest session lifetime accepted.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn invalid(field: &'static str, reason: impl Into<String>) -> crate::Error {
    DomainError::InvalidConfig {
        field,
        reason: reason.into(),
    }
    .into()
}

/// Checks a session lifetime is within [`MIN_TTL`]..=[`MAX_TTL`].
pub(crate) fn check_ttl(field: &'static str, ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(invalid(
            field,
            format!("must be between 1 hour and 30 days, got {ttl:?}"),
        ));
    }
    Ok(())
}

impl SessionConfig {
    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_ttl("default_ttl", self.default_ttl)?;
        if self.max_active_sessions == 0 {
            return Err(invalid("max_active_sessions", "must be at least 1"));
        }
        if self.agent_state.max_turns == 0 {
            return Err(invalid("agent_state.max_turns", "must be at least 1"));
        }
        if self.agent_state.max_bytes < 1024 {
            return Err(invalid("agent_state.max_bytes", "must be at least 1024"));
        }
        if self.idle_after.is_some_and(|idle| idle.is_zero()) {
            return Err(invalid("idle_after", "must be positive (or None)"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600))
            .contains(&self.maintenance_interval)
        {
            return Err(invalid(
                "maintenance_interval",
                "must be between 1 second and 24 hours",
            ));
        }
        Ok(())
    }
}
