//! Configuration of an [`AgentHealthMonitor`](crate::AgentHealthMonitor).

use std::collections::BTreeMap;
use std::time::Duration;

use smalltalk_types::{AgentPhase, Error as DomainError};

use crate::Result;

/// How long an agent may stay in one phase without its progress counter
/// moving before it is taken for stuck. `idle` has no deadline: an idle
/// agent only has to answer heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseDeadlines {
    /// Waiting on a language model. Default 120 s.
    pub llm_call: Duration,
    /// Running a tool. Default 60 s.
    pub tool_call: Duration,
    /// Application phases by name; others use `activity_timeout`.
    pub custom: BTreeMap<String, Duration>,
}

impl Default for PhaseDeadlines {
    fn default() -> Self {
        Self {
            llm_call: Duration::from_secs(120),
            tool_call: Duration::from_secs(60),
            custom: BTreeMap::new(),
        }
    }
}

/// When the whole system degrades gracefully (FR-010a): new sessions
/// paused, session capacity halved, failed agents retried periodically,
/// operators alerted.
#[derive(Debug, Clone, PartialEq)]
pub struct DegradationConfig {
    /// Enter after more than this many agent failures within `window`.
    /// Default 3.
    pub failures: u32,
    /// Default 30 s.
    pub window: Duration,
    /// Leave once fewer than this many agents are `failed` ... Default 2.
    pub exit_below_failed: usize,
    /// ... for this long. Default 120 s.
    pub exit_after: Duration,
    /// While degraded, failed agents get a new recovery attempt this often.
    /// Default 60 s.
    pub retry_interval: Duration,
}

impl Default for DegradationConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            window: Duration::from_secs(30),
            exit_below_failed: 2,
            exit_after: Duration::from_secs(120),
            retry_interval: Duration::from_secs(60),
        }
    }
}

/// How the monitor watches agents. Every field has a documented default;
/// [`validate`](Self::validate) checks the ranges. Tests use milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// How often each agent is asked for a heartbeat (FR-006). Default 2 s.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may take before it counts as missed, and the
    /// deadline of custom phases without their own. Default 5 s.
    pub activity_timeout: Duration,
    /// Missed heartbeats in a row before the agent is `disconnected`
    /// (FR-007). Default 2.
    pub max_missed: u32,
    /// How often each agent gets a liveness probe, a real small work
    /// request (FR-009). Default 5 s.
    pub probe_interval: Duration,
    /// How long a probe may take. Default 5 s.
    pub probe_timeout: Duration,
    /// How long restoring an agent (state, restart, replay) may take before
    /// the attempt fails (FR-009a). Default 30 s.
    pub restoration_timeout: Duration,
    /// Per-phase progress deadlines.
    pub phase_deadlines: PhaseDeadlines,
    /// System-wide graceful degradation.
    pub degradation: DegradationConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            activity_timeout: Duration::from_secs(5),
            max_missed: 2,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(5),
            restoration_timeout: Duration::from_secs(30),
            phase_deadlines: PhaseDeadlines::default(),
            degradation: DegradationConfig::default(),
        }
    }
}

fn invalid(field: &'static str, reason: &str) -> crate::Error {
    DomainError::InvalidConfig {
        field,
        reason: reason.into(),
    }
    .into()
}

/// The longest interval, timeout or deadline accepted (a day): longer
/// ones would overflow timers.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn positive(field: &'static str, value: Duration) -> Result<()> {
    if value.is_zero() || value > MAX_DURATION {
        return Err(invalid(
            field,
            &format!("must be between 1 ns and 24 hours, got {value:?}"),
        ));
    }
    Ok(())
}

impl HealthConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        positive("heartbeat_interval", self.heartbeat_interval)?;
        positive("activity_timeout", self.activity_timeout)?;
        if !(1..=1000).contains(&self.max_missed) {
            return Err(invalid("max_missed", "must be between 1 and 1000"));
        }
        positive("probe_interval", self.probe_interval)?;
        positive("probe_timeout", self.probe_timeout)?;
        positive("restoration_timeout", self.restoration_timeout)?;
        positive("phase_deadlines.llm_call", self.phase_deadlines.llm_call)?;
        positive("phase_deadlines.tool_call", self.phase_deadlines.tool_call)?;
        if self
            .phase_deadlines
            .custom
            .values()
            .any(|deadline| deadline.is_zero() || *deadline > MAX_DURATION)
        {
            return Err(invalid(
                "phase_deadlines.custom",
                "each must be between 1 ns and 24 hours",
            ));
        }
        positive("degradation.window", self.degradation.window)?;
        positive("degradation.exit_after", self.degradation.exit_after)?;
        positive(
            "degradation.retry_interval",
            self.degradation.retry_interval,
        )?;
        if self.degradation.exit_below_failed == 0 {
            return Err(invalid(
                "degradation.exit_below_failed",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// How long an agent may go without a sign of life (a good heartbeat,
    /// recorded activity, progress) before it is `disconnected`:
    /// `heartbeat_interval x max_missed`, whatever answers are pending.
    pub fn silence_limit(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(self.max_missed)
    }

    /// How long `phase` may go without progress; `None` for idle.
    pub fn deadline(&self, phase: &AgentPhase) -> Option<Duration> {
        match phase {
            AgentPhase::Idle => None,
            AgentPhase::LlmCall => Some(self.phase_deadlines.llm_call),
            AgentPhase::ToolCall => Some(self.phase_deadlines.tool_call),
            AgentPhase::Custom(name) => Some(
                self.phase_deadlines
                    .custom
                    .get(name)
                    .copied()
                    .unwrap_or(self.activity_timeout),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeros_are_refused() {
        HealthConfig::default().validate().unwrap();
        let cases = [
            (
                "heartbeat_interval",
                HealthConfig {
                    heartbeat_interval: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "max_missed",
                HealthConfig {
                    max_missed: 0,
                    ..Default::default()
                },
            ),
            (
                "probe_timeout",
                HealthConfig {
                    probe_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(crate::Error::Invalid(DomainError::InvalidConfig { field: named, .. })) => {
                    assert_eq!(named, field)
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn phases_have_their_own_deadlines() {
        let mut config = HealthConfig::default();
        config
            .phase_deadlines
            .custom
            .insert("embed".into(), Duration::from_secs(9));
        assert_eq!(config.deadline(&AgentPhase::Idle), None);
        assert_eq!(
            config.deadline(&AgentPhase::LlmCall),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            config.deadline(&AgentPhase::Custom("embed".into())),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            config.deadline(&AgentPhase::Custom("other".into())),
            Some(Duration::from_secs(5))
        );
    }
}
