//! Ports: small traits through which crates reach services they do not own.
//!
//! The capability crates never depend on each other; where one needs another
//! (health publishes events, sessions raise alerts) it talks to a port
//! defined here and the umbrella crate plugs the implementation in. Tests
//! plug in fakes such as `RecordingAlertSink` and `RecordingEventSink` (feature
//! `test-util`).
//! The [`Clock`](crate::Clock) port lives in [`crate::time`].

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{AgentId, ConversationId, EventPriority, SessionId, Timestamp, Topic};

/// How bad an [`Alert`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertSeverity {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Something failed.
    Error,
    /// Data is at risk: act now.
    Critical,
}

/// A notification for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// How bad.
    pub severity: AlertSeverity,
    /// The component raising it, for example `session`.
    pub source: String,
    /// What happened, one line, no message bodies or credentials.
    pub message: String,
    /// Structured context: ids, error text, retry counts.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// When it was raised.
    pub timestamp: Timestamp,
}

/// Where alerts go.
#[async_trait]
pub trait AlertSink: Send + Sync + fmt::Debug + 'static {
    /// Delivers one alert. Must not fail the caller: an unreachable sink logs
    /// and drops.
    async fn raise(&self, alert: Alert);
}

/// The default sink: one structured log line per alert (ERROR for errors and
/// critical alerts, WARN for warnings, INFO otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlertSink;

#[async_trait]
impl AlertSink for LogAlertSink {
    async fn raise(&self, alert: Alert) {
        let context = Value::Object(alert.context);
        match alert.severity {
            AlertSeverity::Critical | AlertSeverity::Error => tracing::error!(
                severity = ?alert.severity, source = %alert.source, %context, "ALERT: {}", alert.message
            ),
            AlertSeverity::Warning => tracing::warn!(
                source = %alert.source, %context, "ALERT: {}", alert.message
            ),
            AlertSeverity::Info => tracing::info!(
                source = %alert.source, %context, "ALERT: {}", alert.message
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordingAlertSink;

    #[tokio::test]
    async fn recording_sink_keeps_alerts_in_order() {
        let sink = RecordingAlertSink::default();
        for severity in [AlertSeverity::Warning, AlertSeverity::Critical] {
            sink.raise(Alert {
                severity,
                source: "test".into(),
                message: "m".into(),
                context: Map::new(),
                timestamp: Timestamp::now(),
            })
            .await;
        }
        let alerts = sink.alerts();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[1].severity, AlertSeverity::Critical);
    }
}

/// Something that happened, for the [`EventSink`] port: what a capability
/// crate announces without depending on the event bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The topic, for example `session:created`.
    pub topic: Topic,
    /// Urgency.
    pub priority: EventPriority,
    /// The session it concerns.
    pub session_id: Option<SessionId>,
    /// The conversation it concerns.
    pub conversation_id: Option<ConversationId>,
    /// The details.
    pub payload: Value,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// Where capability crates announce what happened; the umbrella connects it
/// to the event bus. Like [`AlertSink`], it must not fail the caller: a sink
/// that cannot deliver logs and drops.
#[async_trait]
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// Announces one thing that happened.
    async fn announce(&self, announcement: Announcement);
}

/// What a replay of missed events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Events handled.
    pub delivered: u64,
    /// Events the agent's handlers gave up on.
    pub failed: u64,
}

/// Replays to a recovered agent what it missed while it was down; the
/// health monitor asks, the umbrella connects it to the event bus.
#[async_trait]
pub trait MissedEventReplayer: Send + Sync + fmt::Debug + 'static {
    /// Delivers again to `agent_id`'s subscriptions the events published
    /// since `since`. An agent with no subscriptions has nothing to replay.
    async fn replay_missed(
        &self,
        agent_id: &AgentId,
        since: Timestamp,
    ) -> Result<ReplayCounts, BoxError>;
}

/// The error a port implementation reports: any error, kept as the cause
/// (`#[source]`) of the caller's typed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where an agent's state lives (FR-009a): the session it serves. The
/// health monitor keeps and restores an agent's state through it, so a
/// restarted agent gets the state the session kept, within the session's
/// limits; the session manager implements it, the umbrella connects them.
#[async_trait]
pub trait AgentStateSource: Send + Sync + fmt::Debug + 'static {
    /// `agent`'s state in `session`, if it has one.
    async fn load_agent_state(
        &self,
        session: crate::SessionId,
        agent: &AgentId,
    ) -> Result<Option<crate::AgentState>, BoxError>;

    /// Stores `state` as its agent's state in `session`.
    async fn store_agent_state(
        &self,
        session: crate::SessionId,
        state: crate::AgentState,
    ) -> Result<(), BoxError>;
}

/// Something that keeps data under a session's namespace (the state
/// store), which must go when the session's content does (SPEC "Privacy and
/// retention"): the session manager calls it when a session is invalidated
/// or deleted, and retries a failure from its maintenance; the umbrella
/// connects them.
#[async_trait]
pub trait SessionContentPurger: Send + Sync + fmt::Debug + 'static {
    /// Deletes everything kept for `session`, history included. Idempotent.
    async fn purge_session(&self, session: crate::SessionId) -> Result<(), BoxError>;
}

/// Graceful degradation (FR-010a): the health monitor switches it, the
/// session manager honours it (new sessions paused, capacity halved); the
/// umbrella connects the two.
pub trait DegradationControl: Send + Sync + fmt::Debug + 'static {
    /// Enters (`true`) or leaves (`false`) degraded operation.
    fn set_degraded(&self, degraded: bool);
}

/// An agent failure seen by another part (a group whose agent kept
/// failing its turn), for the health monitor: the group crate reports it,
/// once its own retries have given up; the umbrella connects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFailureReport {
    /// The agent.
    pub agent_id: AgentId,
    /// Who saw it, for example `group:<id>`.
    pub source: String,
    /// The last error, one line.
    pub error: String,
    /// How many times the agent was asked.
    pub attempts: u32,
    /// Whether the failure counts toward graceful degradation (FR-010a).
    /// Off by default in the group crate, so a flaky model does not pause
    /// new sessions.
    pub counts_toward_degradation: bool,
    /// When it gave up.
    pub timestamp: Timestamp,
}

/// Where agent failures seen elsewhere go (the health monitor). Like
/// [`EventSink`], it must not fail the caller.
#[async_trait]
pub trait AgentFailureSink: Send + Sync + fmt::Debug + 'static {
    /// Takes one report.
    async fn agent_failed(&self, report: AgentFailureReport);
}
