//! Agent health: states, status records and recovery strategies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::duration_ms;
use crate::{AgentId, Timestamp};

/// Where an agent stands in the health state machine:
/// `active -> disconnected -> recovering -> active | failed`, plus
/// `degraded` when it works only partly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Answering heartbeats and doing work.
    Active,
    /// Missed its deadline; recovery pending.
    Disconnected,
    /// A recovery attempt is running.
    Recovering,
    /// Recovery gave up; operators were alerted.
    Failed,
    /// Recovered only partly (for example most missed events failed to replay).
    Degraded,
}

/// What an agent reports it is doing, so each phase gets its own deadline.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentPhase {
    /// Waiting for work.
    Idle,
    /// Waiting on a language model.
    LlmCall,
    /// Running a tool.
    ToolCall,
    /// An application-defined phase.
    Custom(String),
}

/// The health record of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentHealthStatus {
    /// The agent.
    pub agent_id: AgentId,
    /// Current state.
    pub state: HealthState,
    /// Last heartbeat answered (or activity recorded).
    #[serde(default)]
    pub last_heartbeat: Option<Timestamp>,
    /// Last natural activity (a message handled, a task done).
    #[serde(default)]
    pub last_activity: Option<Timestamp>,
    /// Consecutive missed heartbeats.
    #[serde(default)]
    pub missed_beats: u32,
    /// Recovery attempts since the agent was last active.
    #[serde(default)]
    pub recovery_attempts: u32,
    /// The phase reported with the last heartbeat.
    pub phase: AgentPhase,
    /// The progress counter reported with the last heartbeat.
    #[serde(default)]
    pub progress: u64,
    /// The last failure, for operators. Never contains message bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What to do when an agent fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryKind {
    /// Restart the same agent with its saved state.
    Restart,
    /// Build a backup agent from a factory; it takes over with the saved state.
    Replace,
    /// Alert operators only; never restart.
    Alert,
}

/// When a stopped agent is restarted (as in OTP supervisors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartType {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

/// Per-agent recovery settings (FR-008).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStrategy {
    /// What to do.
    pub kind: RecoveryKind,
    /// Failures before the strategy runs and an alert is raised.
    pub failure_threshold: u32,
    /// How long one recovery attempt may take.
    #[serde(rename = "timeoutMs", with = "duration_ms")]
    pub timeout: Duration,
    /// Delay before the first retry.
    #[serde(rename = "initialBackoffMs", with = "duration_ms")]
    pub initial_backoff: Duration,
    /// Each further retry waits this many times longer (>= 1.0).
    pub backoff_multiplier: f64,
    /// Attempts before the agent is marked failed.
    pub max_retries: u32,
    /// When a stopped agent is restarted.
    pub restart_type: RestartType,
    /// At most this many restarts ...
    pub max_restarts: u32,
    /// ... within this period, else the agent is failed and an alert raised.
    #[serde(rename = "restartPeriodMs", with = "duration_ms")]
    pub restart_period: Duration,
}

impl Default for RecoveryStrategy {
    fn default() -> Self {
        Self {
            kind: RecoveryKind::Restart,
            failure_threshold: 1,
            timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            max_retries: 3,
            restart_type: RestartType::Permanent,
            max_restarts: 3,
            restart_period: Duration::from_secs(60),
        }
    }
}

impl RecoveryStrategy {
    /// The retry schedule between recovery attempts: `initial_backoff`,
    /// times `backoff_multiplier` per attempt, at most
    /// [`MAX_BACKOFF_DELAY`](crate::backoff::MAX_BACKOFF_DELAY).
    pub fn backoff(&self) -> crate::Backoff {
        crate::Backoff::new(
            self.initial_backoff,
            self.backoff_multiplier,
            crate::backoff::MAX_BACKOFF_DELAY,
        )
    }

    /// Checks every field's range (multiplier 1 to 100, initial backoff
    /// at most an hour, 1 to 1,000 retries and restarts); the error names
    /// the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        const DAY: Duration = Duration::from_secs(24 * 3600);
        if !(1..=1000).contains(&self.failure_threshold) {
            return invalid("failureThreshold", "must be between 1 and 1000");
        }
        if self.timeout.is_zero() || self.timeout > DAY {
            return invalid("timeoutMs", "must be between 1 ms and 24 hours");
        }
        self.backoff()
            .validate("initialBackoffMs/backoffMultiplier")?;
        if !(1..=1000).contains(&self.max_retries) {
            return invalid("maxRetries", "must be between 1 and 1000");
        }
        if !(1..=1000).contains(&self.max_restarts) {
            return invalid("maxRestarts", "must be between 1 and 1000");
        }
        if self.restart_period.is_zero() || self.restart_period > 30 * DAY {
            return invalid("restartPeriodMs", "must be between 1 ms and 30 days");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_strategy_is_valid_and_serializes_durations_as_ms() {
        let strategy = RecoveryStrategy::default();
        strategy.validate().unwrap();
        let json = serde_json::to_value(&strategy).unwrap();
        assert_eq!(json["timeoutMs"], 30_000);
        assert_eq!(json["kind"], "restart");
        assert_eq!(
            serde_json::from_value::<RecoveryStrategy>(json).unwrap(),
            strategy
        );
    }

    #[test]
    fn out_of_range_strategies_are_rejected() {
        let bad = [
            RecoveryStrategy {
                failure_threshold: 0,
                ..Default::default()
            },
            RecoveryStrategy {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            RecoveryStrategy {
                backoff_multiplier: 0.5,
                ..Default::default()
            },
            RecoveryStrategy {
                backoff_multiplier: f64::NAN,
                ..Default::default()
            },
            RecoveryStrategy {
                max_restarts: 0,
                ..Default::default()
            },
        ];
        for strategy in bad {
            assert!(
                matches!(strategy.validate(), Err(Error::InvalidConfig { .. })),
                "{strategy:?}"
            );
        }
    }

    #[test]
    fn phases_serialize_kebab_case() {
        assert_eq!(
            serde_json::to_value(AgentPhase::LlmCall).unwrap(),
            "llm-call"
        );
        assert_eq!(
            serde_json::to_value(AgentPhase::Custom("embed".into())).unwrap(),
            serde_json::json!({"custom": "embed"})
        );
    }
}
